"""Building blocks of the TIPS image encoder, named as in the official PyTorch port.

Every parameter name here is part of the checkpoint contract (docs/architecture.md,
"Checkpoint"): renaming one
breaks loading of the released `.npz` files.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tipsv2_core.models.attention import attention

LN_EPS = 1e-6  # the vision tower's LayerNorm epsilon (Scenic / Flax default)


class PatchEmbed(nn.Module):
    """Non-overlapping patchify: [B, 3, H, W] -> [B, H/p * W/p, D] (row-major patches).

    Pixels are standardised first, (x - mean) / std, where a variant asks for it (see
    VisionConfig.input_mean); with mean 0 and std 1 the input goes in untouched.

    With `stem_channels` C > 0 (our small variants, VisionConfig.conv_stem) the patch is
    embedded by an early convolution instead of one linear map: `stem` cuts each p×p
    patch into 2×2 cells of p/2 pixels, [B, C, 2h, 2w] after a GELU, and `proj` maps the
    2×2 cells to D. Each patch's token is then a non-linear function of its own pixels
    (textures), as in "Early Convolutions Help Transformers See Better" (Xiao et al.,
    2021); the patches still do not overlap, so the token grid and masking are unchanged.
    """

    def __init__(
        self,
        patch_size: int,
        embed_dim: int,
        in_chans: int = 3,
        mean: float = 0.0,
        std: float = 1.0,
        stem_channels: int = 0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.mean, self.std = float(mean), float(std)
        self.stem: nn.Sequential | None = None
        if stem_channels:
            if patch_size % 2:
                raise ValueError(f"a conv stem needs an even patch size, got {patch_size}")
            cell = patch_size // 2
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, stem_channels, kernel_size=cell, stride=cell), nn.GELU()
            )
            self.proj = nn.Conv2d(stem_channels, embed_dim, kernel_size=2, stride=2)
        else:
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"image size {h}x{w} is not a multiple of the patch size {p}; "
                f"resize it first (e.g. to {max(p, round(h / p) * p)}x{max(p, round(w / p) * p)})"
            )
        if self.mean != 0.0 or self.std != 1.0:
            x = (x - self.mean) / self.std
        if self.stem is not None:
            x = self.stem(x)
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    Runs through `attention.attention`: `scaled_dot_product_attention` in fp32, which picks
    a fused kernel and never materialises the [B, heads, N, N] score matrix where a
    flash/memory-efficient kernel applies; plain bf16 matmuls under bf16 on the CPU.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D] -> [B, N, D]."""
        b, n, d = x.shape
        # [B, N, 3, heads, hd] -> [3, B, heads, N, hd]
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def values(self, x: torch.Tensor) -> torch.Tensor:
        """The MaskCLIP "values trick": each token's own value vector, projected.

        Equivalent to attention whose weights are the identity matrix. x: [B, N, D].
        """
        d = x.shape[-1]
        v = F.linear(x, self.qkv.weight[2 * d :], self.qkv.bias[2 * d :])
        return self.proj(v)


class LayerScale(nn.Module):
    """Per-channel scaling of a residual branch (CaiT / DINOv2)."""

    def __init__(self, dim: int, init_values: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """GELU MLP (exact GELU, as in the PyTorch port; Scenic used the tanh form)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """SwiGLU FFN of ViT-g: `w12` holds [gate; value] stacked, `w3` projects back."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class Block(nn.Module):
    """Pre-LN transformer block with LayerScale on both residual branches."""

    def __init__(
        self, dim: int, num_heads: int, mlp_hidden: int, ffn: str, init_values: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        if ffn == "mlp":
            self.mlp: nn.Module = Mlp(dim, mlp_hidden)
        elif ffn == "swiglu":
            self.mlp = SwiGLUFFN(dim, mlp_hidden)
        else:
            raise ValueError(f"unknown ffn {ffn!r}; expected 'mlp' or 'swiglu'")
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D] -> [B, N, D]."""
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))

    def forward_values(self, x: torch.Tensor) -> torch.Tensor:
        """The block with attention replaced by the values trick; residual and MLP kept."""
        x = x + self.ls1(self.attn.values(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))
