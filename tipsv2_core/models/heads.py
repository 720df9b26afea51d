"""Projection heads of the self-distillation losses (DINO / iBOT style).

MLP -> bottleneck -> L2 normalisation -> cosine against K weight-normalised prototypes.
The prototypes' norm is fixed to 1 (weight norm with g = 1, as DINO freezes it), so the
logits are cosines in [-1, 1] and the temperatures alone set the sharpness.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


class DINOHead(nn.Module):
    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (nlayers - 1)
        for a, b in itertools.pairwise(dims):
            layers += [nn.Linear(a, b), nn.GELU()]
        layers.append(nn.Linear(dims[-1], bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        self.reset_parameters()

    @property
    def out_dim(self) -> int:
        return self.prototypes.shape[0]

    def reset_parameters(self) -> None:
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in_dim] -> prototype logits [..., K] (cosines)."""
        z = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
        return z @ F.normalize(self.prototypes, dim=-1, eps=1e-6).T
