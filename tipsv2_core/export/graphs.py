"""The three graphs an export holds, as small modules with ONNX-friendly signatures.

- `image_encoder`: images [B, 3, H, W] float32 in [0, 1] -> cls1 [B, D], cls2 [B, D],
  patch_tokens [B, H/14, W/14, D] (the outputs of `VisionTransformer.forward`).
- `image_values`: images -> values [B, H/14, W/14, D] (`VisionTransformer.forward_values`,
  the MaskCLIP patch features zero-shot segmentation needs). A graph of its own rather
  than a fourth output: ONNX Runtime evaluates every node whatever outputs are asked for
  (measured: asking for cls1 alone costs as much as asking for all), so an extra output
  would make every embedding call pay for a second copy of the last block.
- `text_encoder`: ids [B, L] int64, paddings [B, L] int32 (1 = pad) -> embedding [B, D]
  (the pooled output of `TextEncoder.forward`, not L2-normalised, like the module).

Batch, height and width (multiples of 14) and text length are dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tipsv2_core.models.text import TextEncoder
from tipsv2_core.models.vision import VisionTransformer

IMAGE_ENCODER = "image_encoder"
IMAGE_VALUES = "image_values"
TEXT_ENCODER = "text_encoder"
GRAPH_NAMES = (IMAGE_ENCODER, IMAGE_VALUES, TEXT_ENCODER)


@dataclass(frozen=True)
class GraphSpec:
    """Names and symbolic shapes of one graph's inputs and outputs.

    Shapes use names for dynamic axes ("batch", "height", …) and ints for fixed ones.
    """

    name: str
    inputs: dict[str, tuple[str | int, ...]]
    input_types: dict[str, str]
    outputs: dict[str, tuple[str | int, ...]]

    def as_json(self) -> dict:
        return {
            "inputs": {
                k: {"shape": list(v), "dtype": self.input_types[k]} for k, v in self.inputs.items()
            },
            "outputs": {k: {"shape": list(v), "dtype": "float32"} for k, v in self.outputs.items()},
        }


def graph_spec(name: str, width: int) -> GraphSpec:
    """The spec of graph `name` for towers of width D = `width`."""
    image = {"images": ("batch", 3, "height", "width")}
    grid = ("batch", "grid_h", "grid_w", width)
    if name == IMAGE_ENCODER:
        outputs = {"cls1": ("batch", width), "cls2": ("batch", width), "patch_tokens": grid}
        return GraphSpec(name, image, {"images": "float32"}, outputs)
    if name == IMAGE_VALUES:
        return GraphSpec(name, image, {"images": "float32"}, {"values": grid})
    if name == TEXT_ENCODER:
        return GraphSpec(
            name,
            {"ids": ("batch", "length"), "paddings": ("batch", "length")},
            {"ids": "int64", "paddings": "int32"},
            {"embedding": ("batch", width)},
        )
    raise ValueError(f"unknown graph {name!r}; expected one of {GRAPH_NAMES}")


class ImageEncoderGraph(nn.Module):
    """VisionTransformer.forward with a tuple output: images -> (cls1, cls2, patch_tokens)."""

    def __init__(self, vision: VisionTransformer) -> None:
        super().__init__()
        self.vision = vision

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.vision(images)
        return out.cls1, out.cls2, out.patch_tokens


class ImageValuesGraph(nn.Module):
    """VisionTransformer.forward_values: images [B, 3, H, W] -> values [B, h, w, D]."""

    def __init__(self, vision: VisionTransformer) -> None:
        super().__init__()
        self.vision = vision

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vision.forward_values(images)


class TextEncoderGraph(nn.Module):
    """TextEncoder.forward: (ids [B, L], paddings [B, L]) -> embedding [B, D]."""

    def __init__(self, text: TextEncoder) -> None:
        super().__init__()
        self.text = text

    def forward(self, ids: torch.Tensor, paddings: torch.Tensor) -> torch.Tensor:
        return self.text(ids, paddings)


def graph_module(name: str, vision: VisionTransformer, text: TextEncoder) -> nn.Module:
    """The module exported as graph `name`, in eval mode."""
    if name == IMAGE_ENCODER:
        return ImageEncoderGraph(vision).eval()
    if name == IMAGE_VALUES:
        return ImageValuesGraph(vision).eval()
    if name == TEXT_ENCODER:
        return TextEncoderGraph(text).eval()
    raise ValueError(f"unknown graph {name!r}; expected one of {GRAPH_NAMES}")
