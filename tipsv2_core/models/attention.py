"""Softmax attention shared by the image and text towers, with the kernel chosen per dtype.

fp32, every GPU dtype and bf16 inference on the CPU go through
`scaled_dot_product_attention`, as before: fp32 results stay bit-identical to earlier
releases. bf16 *training* on the CPU (a graph that needs gradients) goes through two plain matmuls
and a softmax in fp32 instead, because PyTorch's CPU SDPA kernels gain nothing
from bf16 and their backward with a padding mask (the text tower's) took most of a bf16
demo step in a profile, several times its fp32 time, while plain bf16 matmuls run on the
CPU's bf16 units (AVX512-BF16 / AMX).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """q, k, v: [B, heads, N, hd]; key_valid: [B, 1, 1, N] bool (False = masked key) or
    None -> [B, heads, N, hd]."""
    if q.dtype == torch.bfloat16 and q.device.type == "cpu" and q.requires_grad:
        return _explicit(q, k, v, key_valid)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_valid)


def _explicit(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor | None
) -> torch.Tensor:
    """The [B, heads, N, N] score matrix in bf16, normalised in fp32 (a bf16 softmax would
    round the probabilities of long rows to a few significant bits), applied in bf16."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if key_valid is not None:
        scores = scores.masked_fill(~key_valid, float("-inf"))
    probs = scores.float().softmax(dim=-1).to(v.dtype)
    return probs @ v
