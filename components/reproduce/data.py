"""The recorded data version, restored: the recorded (or given) dataset when its version
still matches, else a synthetic dataset re-made from its recorded generator parameters;
whatever is used must hash to the recorded version, or nothing is trained."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


class DataMismatch(ValueError):
    """The data at hand is not the recorded version (changed, tampered or regenerated)."""


def _version(path: Path) -> str:
    from components.versioning import data_version

    return data_version(path)


def _same(recorded: str, actual: str) -> bool:
    return bool(recorded) and recorded == actual


MANIFEST_PREFIX = "manifest-sha256:"  # components.versioning's version of untracked data
Synthesize = Callable[[Path, Mapping[str, Any]], None]


def synthesize_here(out: Path, generator: Mapping[str, Any]) -> None:
    """Re-makes a synthetic dataset with this checkout's generator (`run.py` uses the
    recorded commit's instead, in its worktree)."""
    from tipsv2_core.data.synth_dataset import write_synthetic_dataset

    write_synthetic_dataset(out, progress=False, workers=1, **synth_arguments(generator))


def synth_arguments(generator: Mapping[str, Any]) -> dict[str, Any]:
    """`write_synthetic_dataset` keywords from a card's `generator` entry."""
    kwargs: dict[str, Any] = {
        "num_images": int(generator["num_images"]),
        "image_size": int(generator["image_size"]),
        "seed": int(generator["seed"]),
        "shard_size": int(generator["shard_size"]),
    }
    if generator.get("splits"):
        kwargs["splits"] = dict(generator["splits"])
    if generator.get("world") is not None:
        kwargs["world"] = str(generator["world"])
    return kwargs


def restore_data(
    dataset: Mapping[str, Any],
    workdir: Path,
    given: str | None = None,
    synthesize: Synthesize = synthesize_here,
) -> tuple[Path, str]:
    """(dataset directory, how it was obtained) for the record's `dataset` entry.

    given: a dataset the user points at (`--data`): used only if it is the recorded
    version. Otherwise the recorded path when it still exists and matches; then a
    re-synthesis from the card's generator parameters into `workdir/data`. DataMismatch
    names both versions when a candidate differs; ValueError when nothing can be restored.
    """
    recorded = str(dataset.get("version") or "")
    if not recorded:
        raise ValueError("the record has no data version: the data cannot be checked")
    if given:
        actual = _version(Path(given))
        if not _same(recorded, actual):
            raise DataMismatch(
                f"--data {given}: version {actual}, but the model was trained on {recorded} "
                "(the data was changed or is another dataset)"
            )
        return Path(given), "given"
    uri = str(dataset.get("uri") or "")
    if uri and (Path(uri) / "manifest.parquet").is_file():
        actual = _version(Path(uri))
        if not _same(recorded, actual):
            raise DataMismatch(
                f"{uri}: version {actual}, but the model was trained on {recorded} "
                "(the recorded dataset was changed since; restore it, or pass --data)"
            )
        return Path(uri), "recorded path"
    generator = dataset.get("generator")
    if not isinstance(generator, Mapping):
        raise ValueError(
            f"dataset {uri or '?'} is gone and was not synthetic (no generator recorded); "
            "restore it (e.g. `tipsv2 data pull`) and pass --data"
        )
    # The recorded folder name (the card records it).
    out = workdir / "data" / str(dataset.get("name") or "dataset")
    synthesize(out, generator)
    actual = _version(out)
    if not _same(recorded, actual):
        why = (
            "a DVC version: restore the data with `tipsv2 data pull` and pass --data"
            if not recorded.startswith(MANIFEST_PREFIX)
            else "the generator changed since, or the record is wrong"
        )
        raise DataMismatch(
            f"re-synthesised data has version {actual}, but the model was trained on "
            f"{recorded} ({why})"
        )
    return out, "re-synthesised"
