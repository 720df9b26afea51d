"""A plainly written reference of the TIPS encoders' maths, for numerical tests.

It reads a state dict (official key names) and computes the forward pass with explicit
operations: layer norms by hand, softmax attention with the full score matrix, the text
tower in the official (L, N, D) layout with an additive -inf mask. It shares no code with
`tipsv2_core.models`, so an agreement between the two is evidence, not a tautology.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def layer_norm(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def linear(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """q, k, v: [B, H, N, hd] -> [B, H, N, hd], with the full [B, H, N, N] matrix."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    scores = scores - scores.amax(-1, keepdim=True)
    p = torch.exp(scores)
    return (p / p.sum(-1, keepdim=True)) @ v


def split_heads(x: Tensor, heads: int) -> Tensor:
    b, n, d = x.shape
    return x.reshape(b, n, heads, d // heads).permute(0, 2, 1, 3)


def merge_heads(x: Tensor) -> Tensor:
    b, h, n, hd = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, n, h * hd)


def gelu_exact(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def vision_forward(
    sd: dict[str, Tensor],
    images: Tensor,
    heads: int,
    masks: Tensor | None = None,
    values_last: bool = False,
    patch: int = 14,
    input_mean: float = 0.0,
    input_std: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """(cls1 [B, D], cls2 [B, D], patches [B, h, w, D]) after the final norm.

    input_mean / input_std: the variant's pixel standardisation (0 / 1 for official sizes).
    """
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    b, _, hh, ww = images.shape
    h, w = hh // patch, ww // patch
    images = (images - input_mean) / input_std
    if "patch_embed.stem.0.weight" in sd:  # a small variant's conv stem: 2×2 cells a patch
        cell = patch // 2
        wstem = sd["patch_embed.stem.0.weight"]  # [C, 3, cell, cell]
        cells = images.reshape(b, 3, 2 * h, cell, 2 * w, cell).permute(0, 2, 4, 1, 3, 5)
        cells = cells.reshape(b, 2 * h, 2 * w, 3 * cell * cell)
        feats = cells @ wstem.reshape(wstem.shape[0], -1).T + sd["patch_embed.stem.0.bias"]
        feats = 0.5 * feats * (1 + torch.erf(feats / math.sqrt(2)))  # exact GELU
        c = feats.shape[-1]  # [B, 2h, 2w, C] -> [B, h*w, C*2*2] in the conv weight's order
        pieces = feats.reshape(b, h, 2, w, 2, c).permute(0, 1, 3, 5, 2, 4)
        pieces = pieces.reshape(b, h * w, c * 4)
    else:  # patchify by hand: [B, 3, h, p, w, p] -> [B, h*w, 3*p*p], then one matmul
        pieces = images.reshape(b, 3, h, patch, w, patch).permute(0, 2, 4, 1, 3, 5)
        pieces = pieces.reshape(b, h * w, 3 * patch * patch)
    wconv = sd["patch_embed.proj.weight"]
    x = pieces @ wconv.reshape(wconv.shape[0], -1).T + sd["patch_embed.proj.bias"]
    if masks is not None:
        x = torch.where(masks[..., None], sd["mask_token"][None], x)
    pos = sd["pos_embed"][0]
    g = math.isqrt(pos.shape[0] - 1)
    grid = pos[1:].T.reshape(1, -1, g, g)
    if (h, w) != (g, g):
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", antialias=True)
    x = x + grid.reshape(-1, h * w).T[None]
    cls1 = sd["cls_token"][0] + pos[:1]
    x = torch.cat([cls1.expand(b, 1, -1), sd["register_tokens"].expand(b, 1, -1), x], dim=1)
    for i in range(depth):
        p = f"blocks.{i}"
        y = layer_norm(x, sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"], 1e-6)
        qkv = linear(y, sd, f"{p}.attn.qkv")
        q, k, v = qkv.chunk(3, dim=-1)
        if values_last and i == depth - 1:
            att = v
        else:
            att = merge_heads(
                softmax_attention(
                    split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
                )
            )
        x = x + sd[f"{p}.ls1.gamma"] * linear(att, sd, f"{p}.attn.proj")
        y = layer_norm(x, sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"], 1e-6)
        if f"{p}.mlp.w12.weight" in sd:
            g12 = linear(y, sd, f"{p}.mlp.w12")
            half = g12.shape[-1] // 2
            m = linear(
                g12[..., :half] * torch.sigmoid(g12[..., :half]) * g12[..., half:],
                sd,
                f"{p}.mlp.w3",
            )
        else:
            m = linear(gelu_exact(linear(y, sd, f"{p}.mlp.fc1")), sd, f"{p}.mlp.fc2")
        x = x + sd[f"{p}.ls2.gamma"] * m
    x = layer_norm(x, sd["norm.weight"], sd["norm.bias"], 1e-6)
    return x[:, 0], x[:, 1], x[:, 2:].reshape(b, h, w, -1)


def sinusoid(length: int, dim: int) -> Tensor:
    half = dim // 2
    rows = []
    for pos in range(length):
        ts = [math.exp(-j * math.log(1e4) / max(half - 1, 1)) for j in range(half)]
        rows.append(
            [math.sin(pos * t) for t in ts] + [math.cos(pos * t) for t in ts] + [0.0] * (dim % 2)
        )
    return torch.tensor(rows, dtype=torch.float32)


def text_forward(sd: dict[str, Tensor], ids: Tensor, paddings: Tensor, heads: int) -> Tensor:
    """Pooled text embedding [N, D] (not normalised), as the official TextEncoder."""
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks."))
    n, length = ids.shape
    d = sd["token_embedding.weight"].shape[1]
    valid = (paddings == 0).float()  # [N, L]
    x = sd["token_embedding.weight"][ids] * math.sqrt(d) + sinusoid(length, d)
    bias = torch.zeros(n, 1, 1, length).masked_fill(valid[:, None, None, :] == 0, float("-inf"))
    for i in range(depth):
        p = f"transformer.resblocks.{i}"
        y = layer_norm(x, sd[f"{p}.ln_1.weight"], sd[f"{p}.ln_1.bias"], 1e-5)
        qkv = y @ sd[f"{p}.attn.in_proj_weight"].T + sd[f"{p}.attn.in_proj_bias"]
        q, k, v = qkv.chunk(3, dim=-1)
        att = softmax_attention(
            split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), bias
        )
        x = x + linear(merge_heads(att), sd, f"{p}.attn.out_proj")
        y = layer_norm(x, sd[f"{p}.ln_2.weight"], sd[f"{p}.ln_2.bias"], 1e-5)
        hdn = torch.clamp(linear(y, sd, f"{p}.mlp.c_fc"), min=0) * valid[..., None]
        x = x + linear(hdn, sd, f"{p}.mlp.c_proj") * valid[..., None]
    x = layer_norm(x, sd["ln_final.weight"], sd["ln_final.bias"], 1e-5)
    return (x * valid[..., None]).sum(1) / (valid.sum(1, keepdim=True) + 1e-8)
