"""`tipsv2 embed dataset`: batch inference over a whole dataset on Ray Data, into a
sharded, resumable Parquet embeddings directory (tipsv2_core/search/store.py) and a faiss
index beside it.

One dataset shard is one unit of work and one Parquet part. The driver works out which
shards are still to do (a part that is whole, made with the same settings and holding
the shard's rows counts as done), hands them to Ray Data actors (each loads the model
once: an ONNX export on ONNX Runtime or a native checkpoint on PyTorch, one thread per
actor) and, as each part lands, updates the manifest and a progress bar over images.
A killed run leaves whole parts and hidden temporary files only; the next run removes
the temporary files (it holds the directory's lock, so they are a dead run's) and does
the rest. `workers=0` runs the same work in this process, without Ray.

Ray comes up as curation's does (`components.curate.execute.ray_session`): a local Ray
with `workers` CPUs, or the cluster at `ray_address` (whose workers must see the dataset
and the output directory on a shared file system).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from tipsv2_core.atomic import (
    COMPLETE_FILE,
    OutputExistsError,
    commit_directory,
    temporary_sibling,
)
from tipsv2_core.data.shards import open_dataset
from tipsv2_core.fingerprint import model_fingerprint
from tipsv2_core.runlock import run_lock
from tipsv2_core.search.embed_shard import embed_shard
from tipsv2_core.search.index import ensure_index
from tipsv2_core.search.store import (
    CAPTION_FIELDS,
    MANIFEST_FILE,
    PARTS_DIR,
    EmbeddingsError,
    EmbedSettings,
    Manifest,
    mark_complete,
    part_info,
    part_name,
    read_manifest,
    write_manifest,
)
from tipsv2_core.uri import strip_file_scheme

DEFAULT_IMAGE_SIZE = 448


@dataclass
class EmbedResult:
    out: Path
    shards: int
    skipped: int  # shards whose parts a previous run had finished
    rows: int  # images embedded by this run
    total_rows: int
    seconds: float
    executor: str
    uri: str  # where the embeddings are: `out` itself, or the s3:// prefix it was published to


def resolve_model(model: str, tracking_uri: str | None = None) -> Path:
    """models:/NAME@ALIAS | models:/NAME/VERSION (the export, downloaded once), an ONNX
    export directory or a native checkpoint directory -> a local path."""
    if model.startswith("models:/"):
        from components.registry import resolve_model_uri

        return Path(resolve_model_uri(model, tracking_uri=tracking_uri))
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"{model}: no such export or checkpoint directory")
    return path


def _cache_dir(uri: str, use: str) -> Path:
    """A folder under $TIPSV2_HOME/cache/embeddings for object-store prefix `uri`: `use`
    "staging" (where an embedding bound for it is made and resumed) or "mirror" (a
    reader's copy). Two folders, so that a reader never sees a write in progress."""
    from components.settings import tipsv2_home

    key = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    return tipsv2_home() / "cache" / "embeddings" / use / key


def _remote_root(uri: str) -> str | None:
    """Where the embeddings published at the s3:// prefix `uri` are read from (the
    version its COMPLETE names), or None while it has none (components.s3_publish)."""
    from components.s3_publish import current_root
    from components.settings import configure

    configure()  # the stack's S3 variables, unless the environment already names a store
    return current_root(uri)


def fetch_embeddings(index: str | os.PathLike) -> Path:
    """An embeddings directory to read: a local path as it is; an s3:// prefix mirrored
    into the cache, downloaded again only when its manifest changed. A prefix without its
    COMPLETE object (a write in progress or killed) is refused."""
    from components import storage
    from components.datasets import is_remote

    text = os.fspath(index)
    if not is_remote(text):
        return Path(strip_file_scheme(text))
    root = _remote_root(text)
    if root is None:
        raise EmbeddingsError(
            f"{text}: incomplete or missing embeddings (no {COMPLETE_FILE} object); a write "
            "that did not finish leaves one; `tipsv2 embed dataset --out` it again"
        )
    mirror = _cache_dir(text, "mirror")
    remote = storage.read_bytes(f"{root}/{MANIFEST_FILE}")
    with contextlib.suppress(OSError):
        if (mirror / COMPLETE_FILE).is_file() and (mirror / MANIFEST_FILE).read_bytes() == remote:
            return mirror
    tmp = mirror.with_name(f".{mirror.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        storage.get_directory(root, tmp)
        shutil.rmtree(mirror, ignore_errors=True)
        tmp.rename(mirror)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return mirror


def default_image_size(path: Path) -> int:
    """An export's first checked image size (its parity was measured there), else 448."""
    from tipsv2_core.export import is_onnx_export
    from tipsv2_core.export.runtime import read_meta

    if is_onnx_export(path):
        sizes = read_meta(path).get("image_sizes") or [DEFAULT_IMAGE_SIZE]
        return int(sizes[0])
    return DEFAULT_IMAGE_SIZE


class ShardEmbedder:
    """The Ray Data UDF (an actor: the model loads once): {"shard": [names]} in,
    {"shard", "rows"} out, each shard's part written by `embed_shard`."""

    def __init__(self, model_path: str, dataset: str, out: str, digest: str, image_size: int,
                 batch_size: int, split: str | None, caption: str | None) -> None:  # fmt: skip
        import torch

        from tipsv2_core.serving.servable import load_servable

        torch.set_num_threads(1)  # one core per actor: actors, not threads, use the cores
        self.vision = load_servable(model_path, threads=1).model.vision
        self.args = dict(dataset=dataset, out=out, digest=digest, image_size=image_size,
                         batch_size=batch_size, split=split, caption=caption)  # fmt: skip

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shards = [str(s) for s in batch["shard"]]
        rows = [embed_shard(self.vision, shard=s, **self.args) for s in shards]
        return {"shard": np.asarray(shards), "rows": np.asarray(rows, dtype=np.int64)}


def _differences(old: EmbedSettings, new: EmbedSettings) -> list[str]:
    a, b = asdict(old), asdict(new)
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k != "dataset" and a[k] != b[k]]


def _prepare_out(out: Path, settings: EmbedSettings, force: bool) -> bool:
    """Refuses to mix settings or to overwrite someone else's files; removes what dead
    runs left (temporary parts). True when `out` is to be replaced as a whole (`force`
    over other settings, or over files that are not embeddings): the new embeddings are
    then made beside it and swapped in once complete (`_built_in`)."""
    manifest = read_manifest(out) if out.is_dir() else None
    used = out.is_dir() and any(out.iterdir())
    if manifest is None and used and not force:
        raise OutputExistsError(
            f"{out}: not empty and not an embeddings directory (no {MANIFEST_FILE}); "
            "choose another --out, or --force to replace it"
        )
    if manifest is not None and manifest.settings.digest != settings.digest and not force:
        changed = "; ".join(_differences(manifest.settings, settings))
        raise EmbeddingsError(
            f"{out}: made with other settings ({changed}); a resume would mix them: "
            "use another --out, or --force to start over"
        )
    if force and used and (manifest is None or manifest.settings.digest != settings.digest):
        return True
    (out / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    for leftover in (out / PARTS_DIR).glob(".*.tmp-*"):  # a dead run's (we hold the lock)
        leftover.unlink()
    return False


@contextlib.contextmanager
def _built_in(out: Path, replace: bool) -> Iterator[Path]:
    """The folder to make the embeddings in: `out` itself (a new or resumed run), or, to
    replace `out`, a hidden sibling renamed over it when the block succeeds and removed
    when it fails, so that a failed `--force` run leaves the previous embeddings as they
    were (tipsv2_core.atomic)."""
    if not replace:
        yield out
        return
    work = temporary_sibling(out)
    try:
        (work / PARTS_DIR).mkdir()
        yield work
        commit_directory(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Ray Data logs each run's plan and draws its own bars: our bar is the one shown."""
    quiet = {logging.getLogger("ray.data"): logging.WARNING,
             logging.getLogger("ray.data._internal.progress"): logging.ERROR}  # fmt: skip
    levels = {log: log.level for log in quiet}
    for log, level in quiet.items():
        log.setLevel(level)
    try:
        yield
    finally:
        for log, level in levels.items():
            log.setLevel(level)


def _run_ray(todo: list[str], kwargs: dict[str, Any], workers: int) -> Iterator[tuple[str, int]]:
    import ray

    with _quiet_ray_data():
        ds = ray.data.from_items([{"shard": s} for s in todo])
        ds = ds.map_batches(
            ShardEmbedder,
            fn_constructor_kwargs=kwargs,
            batch_size=1,  # one shard per call: a part lands as soon as its shard is done
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(workers, len(todo))),
            num_cpus=1,
        )
        ctx = ds.context
        ctx.execution_options.preserve_order = False  # report parts as they land
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        for row in ds.iter_rows():
            yield str(row["shard"]), int(row["rows"])


def _run_local(todo: list[str], kwargs: dict[str, Any]) -> Iterator[tuple[str, int]]:
    embedder = ShardEmbedder(**kwargs)
    for shard in todo:
        out = embedder({"shard": np.asarray([shard])})
        yield shard, int(out["rows"][0])


def embed_dataset(
    model: str,
    data: str,
    out: str | os.PathLike,
    *,
    image_size: int | None = None,
    batch_size: int = 16,
    split: str | None = None,
    caption: str | None = None,
    workers: int = 2,
    ray_address: str | None = None,
    tracking_uri: str | None = None,
    index_kind: str = "flat",
    force: bool = False,
    progress: bool = True,
) -> EmbedResult:
    """Embeds every image of dataset `data` (or of one split) with `model` into `out`.

    A rerun with the same settings skips the shards already done; other settings are
    refused (EmbeddingsError naming the differences) unless `force`. Ends with the
    COMPLETE marker and the faiss index (`index_kind`: flat | hnsw).

    An s3:// `out` is made in a staging folder under $TIPSV2_HOME/cache (started from
    the prefix's complete contents, if any, so that resume and refusals work as for a
    folder) and then published as a new version of the prefix, COMPLETE switching
    readers over last (components.s3_publish): readers see the previous embeddings,
    whole, until the new ones are, and a failed upload leaves the previous ones in place.
    """
    t0 = time.perf_counter()
    if caption is not None and caption not in CAPTION_FIELDS:
        raise ValueError(f"--caption {caption!r}; expected one of {CAPTION_FIELDS}")
    if batch_size <= 0 or workers < 0 or (workers == 0 and ray_address):
        raise ValueError(
            f"--batch-size ({batch_size}) must be positive and --workers ({workers}) >= 1 "
            "with Ray, or 0 for none"
        )
    from components.versioning import data_version

    info = open_dataset(data)
    shards = info.shards(split)
    if not shards:
        raise EmbeddingsError(f"{data}: no shards" + (f" of split {split!r}" if split else ""))
    path = resolve_model(model, tracking_uri)
    size = image_size or default_image_size(path)
    settings = EmbedSettings(
        model=model, fingerprint=model_fingerprint(path), dataset=str(info.path),
        data_version=data_version(info.path), image_size=size, split=split, caption=caption,
    )  # fmt: skip
    cols = info.manifest.select(["shard", "split"]).to_pydict()
    expected = dict.fromkeys(shards, 0)
    for shard, s in zip(cols["shard"], cols["split"], strict=True):
        if shard in expected and split in (None, s):
            expected[shard] += 1
    from components import storage
    from components.datasets import is_remote, publish

    remote = os.fspath(out) if is_remote(os.fspath(out)) else None
    if remote is not None:
        out = _cache_dir(remote, "staging")
        if not out.exists() and (published := _remote_root(remote)) is not None:
            storage.get_directory(published, out)
    out = Path(strip_file_scheme(os.fspath(out)))
    with run_lock(out, what="embedding"):
        replace = _prepare_out(out, settings, force)
        with _built_in(out, replace) as work:
            manifest = read_manifest(work) or Manifest(settings)
            manifest.settings, manifest.shards, manifest.complete = settings, len(shards), False
            done: dict[str, int] = {}
            for shard in shards:
                meta = part_info(work / PARTS_DIR / part_name(shard))
                if meta and meta["digest"] == settings.digest and meta["rows"] == expected[shard]:
                    done[part_name(shard)] = expected[shard]
            manifest.parts = dict(done)
            write_manifest(work, manifest)
            todo = [s for s in shards if part_name(s) not in done]
            executor = "local" if workers == 0 else "ray"
            print(
                f"embed: {len(shards)} shards of {data}: {len(done)} done before (skipped), "
                f"{len(todo)} to embed with {executor}"
                + (f" ({workers} workers)" if workers else ""),
                file=sys.stderr, flush=True,
            )  # fmt: skip
            rows = 0
            if todo:
                kwargs = dict(model_path=str(path), dataset=str(info.path), out=str(work),
                              digest=settings.digest, image_size=size, batch_size=batch_size,
                              split=split, caption=caption)  # fmt: skip
                bar = tqdm(total=sum(expected[s] for s in todo), unit="img", desc="embed",
                           disable=not progress, file=sys.stderr)  # fmt: skip
                with contextlib.ExitStack() as stack:
                    if workers == 0:
                        results = _run_local(todo, kwargs)
                    else:
                        from components.curate.execute import ray_session

                        stack.enter_context(ray_session(workers, ray_address))
                        results = _run_ray(todo, kwargs, workers)
                    for shard, n in results:
                        if n != expected[shard]:
                            raise EmbeddingsError(
                                f"{shard}: embedded {n} rows, expected {expected[shard]}"
                            )
                        manifest.parts[part_name(shard)] = n
                        write_manifest(work, manifest)  # the summary follows the parts
                        rows += n
                        bar.update(n)
                bar.close()
            first = work / PARTS_DIR / part_name(shards[0])
            manifest.dim = pq.read_schema(first).field("cls1").type.list_size
            manifest.complete = True
            write_manifest(work, manifest)
            mark_complete(work)
            ensure_index(work, index_kind)
        if remote is not None:
            publish(out, remote)
    return EmbedResult(out, len(shards), len(done), rows, sum(expected.values()),
                       time.perf_counter() - t0, executor, remote or str(out))  # fmt: skip
