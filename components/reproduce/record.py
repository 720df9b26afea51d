"""The lineage record of a registered model: everything `tipsv2 reproduce` needs to run
the training again, captured when the model is registered and logged as the artifact
`lineage.json` of the registration run (docs/architecture.md, "Reproducing a model").

A record is plain JSON:

    {"format": 1, "kind": "pretrain" | "distill", "git_sha": "...", "git_dirty": "false",
     "data_version": "...", "step": N, "config": {TrainConfig as to_dict},
     "dataset": {"uri", "name", "version", "origin", "generator": {seed, num_images, ...}},
     "tokenizer_sha256": "...", "final_metrics": {"train/loss": ...},
     "execution": {"workers": W, "torch_threads": T} | null,
     "teacher": {a record of the teacher checkpoint} | null,
     "eval": {"tasks", "limit", "image_size", "eval_size"} | null}

The checkpoint's own meta.json gives the config, commit and data version; the dataset card
beside the recorded data path gives the generator's parameters (a synthetic dataset is
re-made from them); the run directory's metrics.jsonl the final training losses. Missing
pieces are recorded as null: reproduction then says which part it cannot do.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RECORD_FILE = "lineage.json"
FORMAT = 1
MAX_TEACHER_DEPTH = 3  # a student of a student of ...: bounded, a cycle must not hang


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _last_row(metrics_file: Path) -> dict[str, float]:
    """The last metrics row of a run (its final losses), finite numbers only."""
    if not metrics_file.is_file():
        return {}
    last: dict[str, Any] = {}
    for line in metrics_file.read_text().splitlines():
        if line.strip():
            try:
                last = json.loads(line)
            except json.JSONDecodeError:
                continue
    return {
        k: float(v)
        for k, v in last.items()
        if k != "step"
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
    }


def execution_record(run_dir: Path) -> dict[str, int] | None:
    """How the run was spread (Ray Train workers, torch threads per worker), from the
    last worker start in `attempts.jsonl`; floats depend on both."""
    attempts = run_dir / "attempts.jsonl"
    if not attempts.is_file():
        return None
    last: dict[str, Any] = {}
    for line in attempts.read_text().splitlines():
        try:
            last = json.loads(line) if line.strip() else last
        except json.JSONDecodeError:
            continue
    if not last:
        return None
    doc = {"workers": int(last.get("world") or 1)}
    if last.get("torch_threads"):
        doc["torch_threads"] = int(last["torch_threads"])
    return doc


def dataset_record(path: str, version: str) -> dict[str, Any]:
    """What a dataset at `path` is and how it was made (its card's `generator`)."""
    card_file = Path(path) / "dataset_card.json"
    card: Mapping[str, Any] = {}
    if card_file.is_file():
        try:
            card = json.loads(card_file.read_text())
        except (OSError, json.JSONDecodeError):
            card = {}
    generator = card.get("generator")
    return {
        "uri": path,
        "name": card.get("name"),
        "version": version,
        "origin": "synthetic" if isinstance(generator, Mapping) else "curated",
        "generator": dict(generator) if isinstance(generator, Mapping) else None,
    }


def capture(
    checkpoint: str | Path,
    *,
    eval_settings: Mapping[str, Any] | None = None,
    git_dirty: str | None = None,
    _depth: int = 0,
) -> dict[str, Any] | None:
    """The record of a native checkpoint directory (`<run>/final`), or None when it is not
    one (an official npz, a path that is gone)."""
    ckpt = Path(checkpoint)
    meta_file = ckpt / "meta.json"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    config = meta.get("config")
    if not isinstance(config, Mapping):
        return None
    data = config.get("data") or {}
    distill = config.get("distill") or {}
    teacher_path = str(distill.get("teacher") or "")
    kind = "distill" if teacher_path else "pretrain"
    version = str(meta.get("data_version") or config.get("run", {}).get("data_version") or "")
    run_dir = ckpt.parent
    tokenizer = run_dir / "tokenizer.model"
    teacher = None
    if teacher_path and _depth < MAX_TEACHER_DEPTH:
        teacher = capture(teacher_path, git_dirty=git_dirty, _depth=_depth + 1)
    return {
        "format": FORMAT,
        "kind": kind,
        "git_sha": meta.get("git_sha"),
        # The checkpoint's own record (written by the training process) wins; `git_dirty`
        # is the registering checkout's guess for checkpoints written before it existed.
        "git_dirty": meta.get("git_dirty", git_dirty),
        "data_version": version,
        "step": meta.get("step"),
        "variant": meta.get("variant"),
        "config": dict(config),
        "dataset": dataset_record(str(data.get("path") or ""), version),
        "tokenizer_sha256": _sha256(tokenizer) or _sha256(Path(str(data.get("tokenizer") or ""))),
        "final_metrics": _last_row(run_dir / "metrics.jsonl"),
        "execution": execution_record(run_dir),
        "teacher": teacher,
        "eval": dict(eval_settings) if eval_settings else None,
    }


def check_record(doc: Any, where: str) -> dict[str, Any]:
    """A record read back, with the fields reproduction relies on checked."""
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a JSON object")
    if doc.get("format") != FORMAT:
        raise ValueError(f"{where}: record format {doc.get('format')!r}, expected {FORMAT}")
    for key in ("kind", "config", "dataset"):
        if not doc.get(key):
            raise ValueError(f"{where}: the record has no {key!r}")
    if doc["kind"] == "distill" and not doc.get("teacher"):
        raise ValueError(
            f"{where}: a distilled model whose teacher left no record; it cannot be re-run"
        )
    return doc
