"""Resuming a run only with the settings it was started with.

A checkpoint's meta.json holds the resolved config and the data version it trained on.
Resuming with another model variant or EMA mode would fail deep inside `load_state_dict`;
resuming with another learning rate, loss weight or dataset would go on silently and
produce a model that no recipe describes. `resume_changes` lists the differences, and
`check_resume` refuses them with one message naming each field, unless the caller accepts
them explicitly (then only the ones a checkpoint can carry over).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tipsv2_core.checkpoint import read_meta
from tipsv2_core.config import TrainConfig, to_dict

# Settings of where and how a run executes, not of what it computes: free to change.
OPERATIONAL = (
    "run.checkpoint_every",
    "run.keep_checkpoints",
    "run.log_every",
    "run.device",
    "run.precision",
    "run.probe_every",
    "run.probe_images",
    "run.probe_split",
    "run.data_version",  # compared on its own, as the data version
    "data.workers",
    "data.path",  # the data is compared by version (or by path when a version is unknown)
    "data.tokenizer",  # the run keeps its tokenizer beside the checkpoints
)
# Training longer is what resuming is for: a stage's step count may grow (or shrink).
EXTENDABLE = re.compile(r"stages\.\d+\.steps")
# Settings that change the shapes of the saved state: the checkpoint cannot be loaded.
MAX_SHOWN = 6  # changes a refusal names
STRUCTURAL = ("model.", "heads.", "ema.mode", "optim.name", "distill.teacher_variant")


@dataclass(frozen=True)
class Change:
    """One setting that differs between a checkpoint and the new run."""

    field: str
    stored: Any
    now: Any

    @property
    def structural(self) -> bool:
        return self.field.startswith(STRUCTURAL)

    def describe(self) -> str:
        return f"{self.field} ({self.stored!r} in the checkpoint, {self.now!r} now)"


class ResumeMismatch(ValueError):
    """The new run's settings differ from the checkpoint it would resume from."""


def _flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, Mapping):
        out: dict[str, Any] = {}
        for k, v in doc.items():
            out |= _flatten(v, f"{prefix}{k}.")
        return out
    if isinstance(doc, list | tuple) and any(isinstance(v, Mapping) for v in doc):
        out = {f"{prefix}#": len(doc)}  # how many stages, then each stage's fields
        for i, v in enumerate(doc):
            out |= _flatten(v, f"{prefix}{i}.")
        return out
    return {prefix[:-1]: list(doc) if isinstance(doc, tuple) else doc}


def resume_changes(meta: Mapping[str, Any], cfg: TrainConfig) -> list[Change]:
    """The differences between a checkpoint's meta (config, data_version) and `cfg`."""
    stored = _flatten(meta.get("config") or {})
    now = _flatten(to_dict(cfg))
    changes = [
        Change(k, stored.get(k), now.get(k))
        for k in sorted(set(stored) | set(now))
        if not k.startswith(OPERATIONAL)
        and not EXTENDABLE.fullmatch(k)
        and stored.get(k) != now.get(k)
    ]
    was, is_ = str(meta.get("data_version") or ""), cfg.run.data_version
    if was and is_:
        if was != is_:
            changes.append(Change("data version", was, is_))
    else:  # a version is unknown: the dataset's location is all there is to compare
        path_was = str((meta.get("config") or {}).get("data", {}).get("path", ""))
        if path_was and cfg.data.path and _same(path_was, cfg.data.path) is False:
            changes.append(Change("data.path", path_was, cfg.data.path))
    return changes


def _same(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def check_resume(checkpoint: str | Path, cfg: TrainConfig, accept: bool = False) -> list[Change]:
    """Refuses (ResumeMismatch) to resume from `checkpoint` with other settings than it
    was written with; `accept` lets through what a checkpoint can carry over (a learning
    rate, a loss weight, other data) and returns it, never a change of shapes."""
    meta = read_meta(checkpoint)
    changes = resume_changes(meta, cfg)
    if not changes:
        return []
    blocking = [c for c in changes if c.structural or not accept]
    if blocking:
        step = meta.get("step", "?")
        fix = (
            "start a new --out"
            if any(c.structural for c in blocking)
            else "resume with the same settings, start a new --out, or accept the change "
            "with --accept-changes"
        )
        shown = [c.describe() for c in blocking[:MAX_SHOWN]]
        if len(blocking) > MAX_SHOWN:
            shown.append(f"… {len(blocking) - MAX_SHOWN} more")
        raise ResumeMismatch(
            f"{checkpoint}: cannot resume from step {step}: {'; '.join(shown)}; {fix}"
        )
    return changes
