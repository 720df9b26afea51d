"""The two-tower TIPS model: image encoder, text encoder and the contrastive temperature."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from tipsv2_core.models.text import TextEncoder
from tipsv2_core.models.variants import VARIANTS, Variant, get_variant
from tipsv2_core.models.vision import VisionTransformer

# TIPSv2's released temperature is ~0.005 (logit scale ~197); a from-scratch run starts
# warmer, as CLIP does (0.07), and learns it.
INIT_TEMPERATURE = 0.07
EMBED_NORM_MIN = 1e-3  # the official scripts clip the norm at 1e-3 before dividing


def l2_normalize(x: torch.Tensor, min_norm: float = EMBED_NORM_MIN) -> torch.Tensor:
    """x / max(‖x‖₂, min_norm) along the last axis, as the official inference scripts do."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(min_norm)


class TwoTowers:
    """The contrastive interface over `vision`, `text` and `temperature`: the PyTorch
    `TIPSModel` and the exported graphs (`tipsv2_core.export.runtime.OnnxTIPSModel`)
    embed and score the same way."""

    vision: Any
    text: Any
    temperature: torch.Tensor

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W] in [0, 1] -> L2-normalised (CLS1, CLS2), each [B, D]."""
        out = self.vision(images)
        return l2_normalize(out.cls1), l2_normalize(out.cls2)

    def encode_text(self, ids: torch.Tensor, paddings: torch.Tensor) -> torch.Tensor:
        """ids, paddings [B, L] -> L2-normalised text embeddings [B, D]."""
        return l2_normalize(self.text(ids, paddings))

    def logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Normalised [B, D] × [T, D] -> cosine / τ, [B, T]."""
        return image_emb @ text_emb.T / self.temperature


class TIPSModel(TwoTowers, nn.Module):
    """Vision tower + text tower + `temperature` (τ; logits = cos / τ).

    State-dict keys are `vision.<official vision key>`, `text.<official text key>` and
    `temperature`, so each tower's official `.npz` maps onto a key prefix.
    """

    def __init__(
        self, variant: Variant | str, pos_grid: int | None = None, conv_stem: int | None = None
    ) -> None:
        """pos_grid / conv_stem: the variant's unless given (a checkpoint's own: a TIPS v1
        16×16 position table, or a small variant saved before it had a conv stem: 0)."""
        super().__init__()
        v = get_variant(variant) if isinstance(variant, str) else variant
        if pos_grid is not None and pos_grid != v.vision.pos_grid:
            v = replace(v, vision=replace(v.vision, pos_grid=pos_grid))
        if conv_stem is not None and conv_stem != v.vision.conv_stem:
            v = replace(v, vision=replace(v.vision, conv_stem=conv_stem))
        self.variant = v
        self.vision = VisionTransformer(v.vision)
        self.text = TextEncoder(v.text)
        self.temperature = nn.Parameter(torch.tensor(INIT_TEMPERATURE))

    @classmethod
    def from_towers(cls, vision: VisionTransformer, text: TextEncoder) -> TIPSModel:
        """Wraps two loaded towers; the variant is the one whose configs they carry."""
        matches = [
            v
            for v in VARIANTS.values()
            if replace(v.vision, pos_grid=vision.cfg.pos_grid, conv_stem=vision.cfg.conv_stem)
            == vision.cfg
            and v.text == text.cfg
        ]
        if not matches:
            raise ValueError("the vision and text towers do not form a known variant")
        with torch.device("meta"):
            model = cls(matches[0], pos_grid=vision.cfg.pos_grid, conv_stem=vision.cfg.conv_stem)
        model.vision, model.text = vision, text
        model.temperature = nn.Parameter(torch.tensor(INIT_TEMPERATURE))
        return model
