"""The TIPS text encoder, with the official PyTorch port's parameter names.

Pre-LN transformer with ReLU MLPs, token embeddings × √d, fixed sinusoidal positions,
a final LayerNorm and masked mean pooling over non-pad tokens. Padding never changes the
result: pad keys are masked in attention and pad positions are excluded from the pool.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tipsv2_core import precision
from tipsv2_core.models.attention import attention
from tipsv2_core.models.variants import TextConfig

POOL_EPS = 1e-8  # as in the official GlobalAvgPooling


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Fixed 1-D positions, timescales 1…1e4, [sin ‖ cos] concatenated: [1, length, dim]."""
    half = dim // 2
    log_increment = math.log(10_000.0) / max(half - 1, 1)
    inv_timescales = torch.exp(
        torch.arange(half, dtype=torch.float32, device=device) * -log_increment
    )
    scaled = torch.arange(length, dtype=torch.float32, device=device)[:, None] * inv_timescales
    signal = torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)
    return F.pad(signal, (0, dim % 2))[None]


def trim_padding(ids: torch.Tensor, paddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drops the trailing columns that are padding in every row: ids, paddings [B, L] ->
    [B, L'], L' = the longest text's length (at least 1).

    Exact for `TextEncoder` (positions count from the first column; pad keys are masked
    and pad positions left out of the pool), and it makes a batch of short captions cost
    what its tokens cost, not what `text_max_len` costs: the demo's alt-texts are ~5 tokens
    of 48. Eager only: the length depends on the data, so an exported graph must not
    contain it (a trace would freeze the length it saw).
    """
    if ids.shape != paddings.shape or ids.ndim != 2:
        shapes = f"ids {tuple(ids.shape)}, paddings {tuple(paddings.shape)}"
        raise ValueError(f"{shapes}: expected two [B, L] tensors of one shape")
    if ids.device.type == "meta":  # the dry run counts FLOPs on shapes alone: no data
        return ids, paddings
    used = (paddings == 0).any(dim=0).nonzero()
    length = int(used[-1]) + 1 if used.numel() else 1
    return ids[:, :length], paddings[:, :length]


class TextAttention(nn.Module):
    """Self-attention laid out like `nn.MultiheadAttention` (in_proj_* / out_proj)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        """x: [B, L, D]; key_valid: [B, L] bool (False = padding) -> [B, L, D]."""
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, key_valid[:, None, None, :])
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class MaskedMlp(nn.Module):
    """ReLU MLP whose hidden and output activations are zeroed at pad positions."""

    def __init__(self, width: int, mlp_dim: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, mlp_dim)
        self.c_proj = nn.Linear(mlp_dim, width)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x: [B, L, D]; valid: [B, L, 1] float (1 = token, 0 = padding)."""
        return self.c_proj(F.relu(self.c_fc(x)) * valid) * valid


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.attn = TextAttention(width, num_heads)
        self.ln_1 = nn.LayerNorm(width)  # eps 1e-5: the PyTorch default, as in the port
        self.mlp = MaskedMlp(width, mlp_dim)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), key_valid)
        return x + self.mlp(self.ln_2(x), key_valid[..., None].to(x.dtype))


class Transformer(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(cfg.width, cfg.num_heads, cfg.mlp_dim) for _ in range(cfg.depth)
        )

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        for blk in self.resblocks:
            x = blk(x, key_valid)
        return x


class TextEncoder(nn.Module):
    """ids [B, L] int64, paddings [B, L] (1 = pad) -> pooled text embedding [B, D].

    `compute_precision` as in `VisionTransformer`: how inference computes (fp32 or bf16).
    """

    compute_precision = "fp32"

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.transformer = Transformer(cfg)
        self.ln_final = nn.LayerNorm(cfg.width)
        self.reset_parameters()

    @property
    def width(self) -> int:
        return self.cfg.width

    def reset_parameters(self) -> None:
        """Scenic's init: xavier-uniform kernels, tiny biases, fan-in normal embeddings."""
        if self.token_embedding.weight.is_meta:
            return
        nn.init.normal_(self.token_embedding.weight, std=1.0 / math.sqrt(self.cfg.width))
        for name, p in self.transformer.named_parameters():
            if p.ndim == 2:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.normal_(p, std=1e-6)

    def forward(self, ids: torch.Tensor, paddings: torch.Tensor) -> torch.Tensor:
        if ids.shape != paddings.shape:
            raise ValueError(f"ids {tuple(ids.shape)} and paddings {tuple(paddings.shape)} differ")
        valid = paddings == 0  # [B, L] bool
        # A row made only of padding (an empty text) would give an all -inf attention row
        # and NaNs; let such rows attend everywhere. Their pooled output is 0 either way.
        key_valid = valid | ~valid.any(dim=1, keepdim=True)
        with precision.autocast(self.compute_precision, ids.device):
            x = self.token_embedding(ids) * math.sqrt(self.cfg.width)
            x = x + sinusoidal_positions(ids.shape[1], self.cfg.width, x.device).to(x.dtype)
            x = self.ln_final(self.transformer(x, key_valid))
            keep = valid[..., None].to(x.dtype)  # [B, L, 1]
            return (x * keep).sum(dim=1) / (keep.sum(dim=1) + POOL_EPS)
