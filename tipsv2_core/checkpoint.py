"""Native checkpoints: a directory written atomically, COMPLETE marker last
(docs/architecture.md, "Checkpoint").

    <dir>/model.safetensors   weights (TIPSModel state dict: vision.*, text.*, temperature)
    <dir>/state.safetensors   optional training state (optimizer, EMA heads, loss centres)
    <dir>/meta.json           step, variant, resolved config, data version, git SHA and
                              whether the tree was dirty, …
    <dir>/COMPLETE            written last; a directory without it is never loaded

safetensors holds raw tensors only, so loading a checkpoint can never execute code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tipsv2_core.atomic import COMPLETE_FILE, commit_directory, temporary_sibling
from tipsv2_core.errors import CheckpointError
from tipsv2_core.provenance import git_dirty, git_sha

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
META_FILE = "meta.json"
FORMAT_VERSION = 1


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / COMPLETE_FILE).is_file()


def _contiguous(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def save_checkpoint(
    path: str | os.PathLike,
    model_state: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    train_state: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Writes a checkpoint directory atomically and returns its path.

    Everything goes to a sibling temporary directory first and is renamed into place, so
    a reader sees either the previous complete checkpoint or the new complete one.
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        _save_tensors(model_state, tmp / MODEL_FILE)
        if train_state:
            _save_tensors(train_state, tmp / STATE_FILE)
        full_meta = {
            "format_version": FORMAT_VERSION,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "git_sha": git_sha(),
            "git_dirty": git_dirty(),
            **meta,
        }
        (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2, sort_keys=True) + "\n")
        commit_directory(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _save_tensors(tensors: Mapping[str, torch.Tensor], file: Path) -> None:
    """safetensors' `save_file`, whose I/O failures (a full or read-only disk) come out
    as the OSError they are, with their errno, instead of a SafetensorError."""
    try:
        save_file(_contiguous(tensors), str(file))
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        errno = int(code[1])
        raise OSError(errno, os.strerror(errno), str(file)) from None


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({e})") from None


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """meta.json of a complete checkpoint directory."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not is_complete(path):
        raise CheckpointError(
            f"{path}: incomplete checkpoint (no {COMPLETE_FILE} marker); it was being written "
            "when its writer stopped and is never loaded"
        )
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / META_FILE}: unreadable ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / META_FILE}: expected a JSON object")
    return meta


def load_checkpoint(
    path: str | os.PathLike, with_state: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor] | None]:
    """(model tensors, meta, training state or None) of a complete checkpoint directory."""
    path = Path(path)
    meta = read_meta(path)
    model_state = _load_tensors(path / MODEL_FILE)
    state = None
    if with_state and (path / STATE_FILE).is_file():
        state = _load_tensors(path / STATE_FILE)
    return model_state, meta, state
