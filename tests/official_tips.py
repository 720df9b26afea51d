"""The official TIPS PyTorch image encoder's forward pass, re-implemented for comparison.

Follows `pytorch/image_encoder.py` of google-deepmind/tips as its inference script
(`run_image_encoder_inference.py`) builds it: `block_chunks=0`, `init_values=1.0`
(LayerScale on both branches), `interpolate_antialias=True`, `interpolate_offset=0.0`,
LayerNorm eps 1e-6, exact GELU, and — without xFormers installed, as on a CPU — the
`MemEffAttention` class falling back to its parent's eager attention: q scaled *before*
`q @ kᵀ`, the full [B, heads, N, N] score matrix, `softmax`, then `@ v`. The one register
token (CLS2) is inserted after the position add. Same module tree and parameter names as
the official port, so the official `.npz` and our state dicts load with `strict=True`.

Only the inference path is kept: no stochastic depth, nested tensors or xFormers. Our
encoder is the production code; this is the baseline `bench/encoders.py` measures it
against, and `tests/test_official_forward.py` checks they agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6  # functools.partial(nn.LayerNorm, eps=1e-6) in the official VisionTransformer


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFNFused(nn.Module):
    """ViT-g's FFN without xFormers: w12 -> chunk -> silu(x1) * x2 -> w3."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.patch_size = (patch, patch)
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # [B, D, h, w]
        return x.flatten(2).transpose(1, 2)  # [B, h*w, D]; the official norm is Identity


class Attention(nn.Module):
    """The official eager attention (qkv_bias=True, proj_bias=True, no dropout at eval)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # [3, B, heads, N, hd]
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, heads, N, N]
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma  # inplace=False in the official blocks


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int, ffn: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = Mlp(dim, hidden) if ffn == "mlp" else SwiGLUFFNFused(dim, hidden)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class OfficialVisionTransformer(nn.Module):
    """`vit_small/base/large/so400m/giant2(img_size, patch_size=14, ...)` at inference.

    `img_size` fixes the position table's grid (img_size // 14)², as in the official
    constructor; other input sizes resize it.
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        img_size: int = 448,
        patch_size: int = 14,
        ffn: str = "mlp",
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_register_tokens = 1
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, 1, embed_dim))
        hidden = int(embed_dim * mlp_ratio)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, hidden, ffn) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=EPS)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))

    def interpolate_pos_encoding(self, x: torch.Tensor, w: int, h: int) -> torch.Tensor:
        """Table for an input of w × h pixels (the official names the first spatial axis
        w); bilinear with antialias to an explicit size (interpolate_offset=0.0)."""
        previous_dtype = x.dtype
        npatch = x.shape[1] - 1
        num_patches = self.pos_embed.shape[1] - 1
        if npatch == num_patches and w == h:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
        dim = x.shape[-1]
        w0, h0 = w // self.patch_size, h // self.patch_size
        side = int(math.sqrt(num_patches))
        assert num_patches == side * side
        patch_pos_embed = F.interpolate(
            patch_pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2),
            size=(w0, h0),
            mode="bilinear",
            antialias=True,
        )
        assert (w0, h0) == patch_pos_embed.shape[-2:]
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        out = torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)
        return out.to(previous_dtype)

    def prepare_tokens_with_masks(
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> torch.Tensor:
        _, _, w, h = x.shape
        x = self.patch_embed(x)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, w, h)
        return torch.cat(
            (x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]), dim=1
        )

    def forward(
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W] in [0, 1] -> (CLS1 [B, 1, D], CLS2 [B, 1, D],
        patch tokens [B, h*w, D]), after the final norm, as the official forward returns."""
        x = self.prepare_tokens_with_masks(x, masks)
        for blk in self.blocks:
            x = blk(x)
        x_norm = self.norm(x)
        r = self.num_register_tokens
        return x_norm[:, :1], x_norm[:, 1 : r + 1], x_norm[:, r + 1 :]


def official_for(
    embed_dim: int, depth: int, num_heads: int, mlp_hidden: int, pos_grid: int, ffn: str = "mlp"
) -> OfficialVisionTransformer:
    """The official encoder of one of our variants' shapes, its position table on a
    pos_grid² grid (img_size = 14 · pos_grid, as the official constructor takes it).

    For ViT-g, mlp_hidden is the SwiGLU hidden width after the official rounding; its
    mlp_ratio is then 4 (what `vit_giant2` passes)."""
    ratio = 4.0 if ffn == "swiglu" else mlp_hidden / embed_dim
    return OfficialVisionTransformer(
        embed_dim, depth, num_heads, ratio, img_size=14 * pos_grid, ffn=ffn
    )
