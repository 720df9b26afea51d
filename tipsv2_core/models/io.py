"""Load or save a TIPSModel from any supported checkpoint: native directory or official npz."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from tipsv2_core.checkpoint import load_checkpoint, save_checkpoint
from tipsv2_core.errors import CheckpointError
from tipsv2_core.models.official import load_official, load_text_npz, load_vision_npz
from tipsv2_core.models.text import TextEncoder
from tipsv2_core.models.tips import TIPSModel
from tipsv2_core.models.variants import get_variant
from tipsv2_core.models.vision import VisionTransformer

VISION_SUFFIX = "_vision.npz"
TEXT_SUFFIX = "_text.npz"


def save_model(
    model: TIPSModel, path: str | os.PathLike, meta: dict[str, Any] | None = None
) -> Path:
    """Writes a native checkpoint of the whole two-tower model."""
    info = {
        "kind": "tips_model",
        "variant": model.variant.name,
        "pos_grid": model.vision.cfg.pos_grid,
        "conv_stem": model.vision.cfg.conv_stem,
        **(meta or {}),
    }
    return save_checkpoint(path, model.state_dict(), info)


def load_native(path: str | os.PathLike, variant: str | None = None) -> TIPSModel:
    """Loads a native checkpoint directory strictly; `variant`, if given, must match it."""
    tensors, meta, _ = load_checkpoint(path)
    name = meta.get("variant")
    if name is None:
        raise CheckpointError(f"{path}: meta.json has no 'variant'")
    if variant is not None and get_variant(variant).name != get_variant(name).name:
        raise CheckpointError(f"{path}: holds variant {name!r}, not {variant!r}")
    # A checkpoint without "conv_stem" predates the small variants' conv stem: it has the
    # linear patch embedding (0), whatever the variant's default is now.
    model = TIPSModel(name, pos_grid=meta.get("pos_grid"), conv_stem=meta.get("conv_stem", 0))
    if "temperature" in tensors:
        model.temperature = torch.nn.Parameter(torch.empty_like(tensors["temperature"]))
    try:
        result = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # shapes that do not fit: meta.json and the weights disagree
        first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
        raise CheckpointError(
            f"{path}: the weights do not fit the variant {name!r} that meta.json names "
            f"({first.strip()})"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: does not fit variant {name!r}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return model


def official_pair(path: str | os.PathLike) -> tuple[Path, Path]:
    """The (vision, text) files of an official release from either file or the shared prefix.

    `ckpt/tips_v2_oss_b14_vision.npz`, `…_text.npz` and `ckpt/tips_v2_oss_b14` all give
    (`ckpt/tips_v2_oss_b14_vision.npz`, `ckpt/tips_v2_oss_b14_text.npz`).
    """
    s = str(path)
    for suffix in (VISION_SUFFIX, TEXT_SUFFIX):
        if s.endswith(suffix):
            s = s[: -len(suffix)]
    return Path(s + VISION_SUFFIX), Path(s + TEXT_SUFFIX)


def is_native(path: str | os.PathLike) -> bool:
    return Path(path).is_dir()


def load_model(path: str | os.PathLike, variant: str | None = None) -> TIPSModel:
    """A whole TIPSModel from a native directory or an official npz pair."""
    if is_native(path):
        return load_native(path, variant)
    vision, text = official_pair(path)
    return load_official(vision, text, variant)


def load_vision(path: str | os.PathLike, variant: str | None = None) -> VisionTransformer:
    """The image encoder alone, from a native directory or an official vision npz."""
    if is_native(path):
        return load_native(path, variant).vision
    return load_vision_npz(path, variant)


def load_text(
    path: str | os.PathLike, variant: str | None = None
) -> tuple[TextEncoder, torch.Tensor]:
    """(text encoder, temperature) from a native directory or an official text npz."""
    if is_native(path):
        model = load_native(path, variant)
        return model.text, model.temperature.detach()
    return load_text_npz(path, variant)
