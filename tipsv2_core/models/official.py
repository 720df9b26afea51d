"""Import and export of the official TIPS/TIPSv2 PyTorch `.npz` checkpoints.

The released files are flat `{state-dict key: array}` archives, one per tower
(`tips_v2_oss_b14_vision.npz`, `tips_v2_oss_b14_text.npz`; the text file also holds
`temperature`). They are read with `allow_pickle=False` and loaded strictly: every key and
shape must match, and a mismatch names the key, both shapes and the variant that fits.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tipsv2_core.errors import CheckpointError
from tipsv2_core.models.text import TextEncoder
from tipsv2_core.models.tips import TIPSModel
from tipsv2_core.models.variants import VARIANTS, Variant, get_variant
from tipsv2_core.models.vision import VisionTransformer

TEMPERATURE_KEY = "temperature"
STEM_KEY = "patch_embed.stem.0.weight"  # only in our small variants' files (conv stem)
Shapes = dict[str, tuple[int, ...]]


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads every array of an `.npz` without ever unpickling; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise CheckpointError(f"{path}: is a single .npy array, not an .npz archive")
            arrays = {k: archive[k] for k in archive.files}
    except CheckpointError:
        raise
    except ValueError as e:  # object arrays, pickled payloads
        raise CheckpointError(
            f"{path}: refused to load: {e} (checkpoints must hold plain numeric arrays; "
            "pickled data is never executed)"
        ) from None
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated .npz archive ({e})") from None
    # NpzFile hands back a member that lacks the .npy header as raw bytes: refuse those.
    odd = [k for k, v in arrays.items() if not isinstance(v, np.ndarray) or v.dtype.hasobject]
    if odd:
        raise CheckpointError(f"{path}: members {odd[:5]} are not plain .npy arrays")
    return arrays


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes an uncompressed `.npz` atomically: a partial file is never left at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _shapes(module: nn.Module) -> Shapes:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def vision_shapes(
    variant: Variant, pos_grid: int | None = None, conv_stem: int | None = None
) -> Shapes:
    """Expected vision keys and shapes of a variant (built on the meta device: no memory)."""
    with torch.device("meta"):
        return _shapes(TIPSModel(variant, pos_grid=pos_grid, conv_stem=conv_stem).vision)


def text_shapes(variant: Variant) -> Shapes:
    """Expected text keys and shapes (temperature included) of a variant."""
    with torch.device("meta"):
        shapes = _shapes(TIPSModel(variant).text)
    shapes[TEMPERATURE_KEY] = ()
    return shapes


def _pos_grid_of(found: Shapes) -> int | None:
    """G of a vision file from `pos_embed` (1, 1 + G*G, D), or None if it is not square."""
    shape = found.get("pos_embed")
    if shape is None or len(shape) != 3:
        return None
    g = math.isqrt(shape[1] - 1)
    return g if g * g == shape[1] - 1 else None


def _conv_stem_of(found: Shapes) -> int:
    """C of a vision file's conv stem (`patch_embed.stem.0.weight` [C, 3, p/2, p/2]); 0
    for the linear patch embedding (every official file)."""
    shape = found.get(STEM_KEY)
    return shape[0] if shape else 0


def _fitting(found: Shapes, expected_of) -> list[str]:
    return [name for name, v in VARIANTS.items() if expected_of(v) == found]


def _check(found: Shapes, expected: Shapes, what: str, path: Path, fits: list[str]) -> None:
    """Raises a CheckpointError that lists every missing, unexpected and mis-shaped key."""
    problems = [
        f"key {k!r} has shape {found[k]}, expected {expected[k]}"
        for k in expected
        if k in found and found[k] != expected[k]
    ]
    problems += [
        f"missing key {k!r} (expected shape {expected[k]})" for k in expected if k not in found
    ]
    problems += [f"unexpected key {k!r} (shape {found[k]})" for k in found if k not in expected]
    if not problems:
        return
    shown = "\n  ".join(problems[:12]) + (
        f"\n  … and {len(problems) - 12} more" if len(problems) > 12 else ""
    )
    hint = (
        f"\nThe file fits variant {' / '.join(fits)}: pass --variant {fits[0]}."
        if fits
        else "\nIt fits no known variant."
    )
    raise CheckpointError(f"{path}: does not fit the {what}:\n  {shown}{hint}")


def _temperature_shape_free(found: Shapes) -> Shapes:
    # The scalar's stored shape (() or (1,)) is not part of the architecture.
    if TEMPERATURE_KEY in found and math.prod(found[TEMPERATURE_KEY]) == 1:
        return {**found, TEMPERATURE_KEY: ()}
    return found


def _to_tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    # np.array (not np.ascontiguousarray, which turns a 0-d array into a 1-d one) keeps
    # every stored shape, so an export writes back exactly what was read.
    return {k: torch.from_numpy(np.array(v, order="C")) for k, v in arrays.items()}


def _resolve(path: Path, found: Shapes, variant: str | None, expected_of, what: str) -> Variant:
    """The variant to build: the one named (checked strictly) or the one the shapes fit."""
    fits = _fitting(found, expected_of)
    if variant is None:
        if not fits:
            _check(found, expected_of(get_variant("b14")), f"{what} of any variant", path, fits)
        variant = fits[0]
    v = get_variant(variant)
    _check(found, expected_of(v), f"{v.name} {what}", path, fits)
    return v


def load_vision_npz(path: str | os.PathLike, variant: str | None = None) -> VisionTransformer:
    """Builds the image encoder an official vision `.npz` describes and loads it strictly.

    The position grid (16 for v1, 32 for v2, or any square grid) is read off `pos_embed`,
    and a small variant's conv stem (absent from official files) off its weight;
    `variant` may be omitted when the shapes identify it.
    """
    path = Path(path)
    arrays = read_npz(path)
    found = {k: tuple(v.shape) for k, v in arrays.items()}
    grid, stem = _pos_grid_of(found), _conv_stem_of(found)
    v = _resolve(path, found, variant, lambda v: vision_shapes(v, grid, stem), "vision tower")
    model = TIPSModel(v, pos_grid=grid, conv_stem=stem).vision
    model.load_state_dict(_to_tensors(arrays), strict=True)
    return model


def load_text_npz(
    path: str | os.PathLike, variant: str | None = None
) -> tuple[TextEncoder, torch.Tensor]:
    """Loads an official text `.npz` strictly; returns the encoder and the temperature τ."""
    path = Path(path)
    arrays = read_npz(path)
    found = _temperature_shape_free({k: tuple(v.shape) for k, v in arrays.items()})
    v = _resolve(path, found, variant, text_shapes, "text tower")
    tensors = _to_tensors(arrays)
    temperature = tensors.pop(TEMPERATURE_KEY)
    model = TIPSModel(v).text
    model.load_state_dict(tensors, strict=True)
    return model, temperature


def load_official(
    vision_path: str | os.PathLike, text_path: str | os.PathLike, variant: str | None = None
) -> TIPSModel:
    """Both towers of an official release as one TIPSModel (temperature kept as stored)."""
    vision = load_vision_npz(vision_path, variant)
    text, temperature = load_text_npz(text_path, variant)
    if text.cfg.width != vision.cfg.embed_dim:
        raise CheckpointError(
            f"{vision_path} (width {vision.cfg.embed_dim}) and {text_path} "
            f"(width {text.cfg.width}) are towers of different variants"
        )
    model = TIPSModel.from_towers(vision, text)
    # Keep the stored shape (() or (1,)) so that an export round-trips bit-exactly.
    model.temperature = nn.Parameter(temperature)
    return model


def vision_arrays(model: VisionTransformer) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def text_arrays(model: TextEncoder, temperature: torch.Tensor) -> dict[str, np.ndarray]:
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    arrays[TEMPERATURE_KEY] = temperature.detach().cpu().numpy()
    return arrays


def export_official(
    model: TIPSModel, vision_path: str | os.PathLike, text_path: str | os.PathLike
) -> None:
    """Writes the two official `.npz` files, loadable by the official inference code (a
    small variant's conv stem has no counterpart there: such files load here only)."""
    write_npz(vision_path, vision_arrays(model.vision))
    write_npz(text_path, text_arrays(model.text, model.temperature))
