"""The TIPS/TIPSv2 image encoder: a ViT with two CLS tokens.

Token order is `[CLS1, CLS2, patches]`. In the official PyTorch port CLS2 is DINOv2's
single register token (`register_tokens`), inserted after the position add, so it carries
no position; slot 0 of `pos_embed` belongs to CLS1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tipsv2_core import precision
from tipsv2_core.models.layers import LN_EPS, Block, PatchEmbed
from tipsv2_core.models.variants import VisionConfig

NUM_PREFIX_TOKENS = 2  # CLS1 + CLS2


@dataclass
class VisionOutput:
    """Final-norm outputs of the image encoder.

    cls1: [B, D] (contrasted with alt-text), cls2: [B, D] (with synthetic captions),
    patch_tokens: [B, h, w, D] with h = H/14, w = W/14.
    """

    cls1: torch.Tensor
    cls2: torch.Tensor
    patch_tokens: torch.Tensor


class VisionTransformer(nn.Module):
    """ViT image encoder with the official TIPS parameter names and shapes.

    `compute_precision` ("fp32" or "bf16") is how the forward passes compute at inference
    (`tipsv2_core.inference.inference_precision` sets it); training sets its precision
    around the whole step instead (`run.precision`).
    """

    compute_precision = "fp32"

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.patch_embed = PatchEmbed(
            cfg.patch_size, d, mean=cfg.input_mean, std=cfg.input_std, stem_channels=cfg.conv_stem
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.pos_grid**2, d))
        self.register_tokens = nn.Parameter(torch.zeros(1, 1, d))  # CLS2
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.mlp_hidden, cfg.ffn, cfg.init_values)
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(d, eps=LN_EPS)
        self.reset_parameters()

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def reset_parameters(self) -> None:
        """Random init as in DINOv2 (the official port's training code base)."""
        if self.pos_embed.is_meta:
            return
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
        """The position table resized to an h×w patch grid: [1, 1 + h*w, D].

        Bilinear with antialias and an explicit output size, like Scenic's
        `jax.image.resize` and the port's `interpolate_offset=0.0`; the resize runs in
        fp32 whatever the model dtype.
        """
        g = self.cfg.pos_grid
        if (h, w) == (g, g):
            return self.pos_embed.to(dtype)
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        d = patch_pos.shape[-1]
        grid = patch_pos.reshape(1, g, g, d).permute(0, 3, 1, 2)  # [1, D, G, G]
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", antialias=True)
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, h * w, d)
        return torch.cat([cls_pos, patch_pos], dim=1).to(dtype)

    def prepare_tokens(
        self, images: torch.Tensor, masks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """images: [B, 3, H, W] in [0, 1]; masks: [B, h*w] bool (True = masked) or None.

        Returns tokens [B, 2 + h*w, D] in the order [CLS1, CLS2, patches].
        """
        b, _, hh, ww = images.shape
        x = self.patch_embed(images)  # [B, h*w, D]
        h, w = hh // self.patch_size, ww // self.patch_size
        if masks is not None:
            if masks.shape != x.shape[:2]:
                raise ValueError(
                    f"masks has shape {tuple(masks.shape)}, expected {tuple(x.shape[:2])} "
                    f"(batch, patches) for {hh}x{ww} images"
                )
            # Masked patches become the learned mask token *before* the position add, so
            # the student still knows where the hidden patch was (DINOv2 / iBOT).
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        x = x + self.interpolate_pos_encoding(h, w, x.dtype)
        return torch.cat([x[:, :1], self.register_tokens.expand(b, -1, -1), x[:, 1:]], dim=1)

    def _split(self, x: torch.Tensor, h: int, w: int) -> VisionOutput:
        x = self.norm(x)
        patches = x[:, NUM_PREFIX_TOKENS:].reshape(x.shape[0], h, w, -1)
        return VisionOutput(cls1=x[:, 0], cls2=x[:, 1], patch_tokens=patches)

    def _grid(self, images: torch.Tensor) -> tuple[int, int]:
        return images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> VisionOutput:
        """images: [B, 3, H, W] with H, W multiples of 14 -> final-norm CLS1, CLS2, patches."""
        with precision.autocast(self.compute_precision, images.device):
            x = self.prepare_tokens(images, masks)
            for blk in self.blocks:
                x = blk(x)
            return self._split(x, *self._grid(images))

    def get_intermediate_layers(
        self, images: torch.Tensor, layers: list[int] | int = 1, norm: bool = True
    ) -> list[VisionOutput]:
        """Outputs of several blocks (DPT heads read 4 of them).

        layers: block indices (negative counts from the end), or n for the last n blocks.
        Each output is split like `forward`; with norm=True the final norm is applied.
        """
        depth = len(self.blocks)
        wanted = list(range(depth - layers, depth)) if isinstance(layers, int) else layers
        wanted = [i % depth for i in wanted]
        h, w = self._grid(images)
        with precision.autocast(self.compute_precision, images.device):
            x = self.prepare_tokens(images)
            outs: dict[int, torch.Tensor] = {}
            for i, blk in enumerate(self.blocks[: max(wanted) + 1]):
                x = blk(x)
                if i in wanted:
                    outs[i] = x
            results = []
            for i in wanted:
                t = outs[i]
                if norm:
                    results.append(self._split(t, h, w))
                else:
                    p = t[:, NUM_PREFIX_TOKENS:].reshape(t.shape[0], h, w, -1)
                    results.append(VisionOutput(cls1=t[:, 0], cls2=t[:, 1], patch_tokens=p))
        return results

    def forward_values(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features for zero-shot segmentation: [B, h, w, D], final norm applied.

        Blocks 0..L-2 run normally; the last block's attention is replaced by each token's
        own value projection (MaskCLIP), keeping its residual and MLP.
        """
        with precision.autocast(self.compute_precision, images.device):
            x = self.prepare_tokens(images)
            for blk in self.blocks[:-1]:
                x = blk(x)
            x = self.blocks[-1].forward_values(x)
            return self._split(x, *self._grid(images)).patch_tokens


def num_patches(image_size: int | tuple[int, int], patch_size: int = 14) -> int:
    """Number of patch tokens for an image size (square int or (H, W))."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    return math.prod((h // patch_size, w // patch_size))
