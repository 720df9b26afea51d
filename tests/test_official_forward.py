"""Our image encoder against the official TIPS PyTorch forward (re-implemented in
tests/official_tips.py) with the same weights: the state dicts load into each other with
strict=True and the outputs agree to fp32 rounding, at the table's own grid and resized."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.conftest import randomize_
from tests.official_tips import official_for
from tipsv2_core.models.variants import VisionConfig, _swiglu_hidden, get_variant
from tipsv2_core.models.vision import VisionTransformer

pytestmark = pytest.mark.unit

TOL = 1e-4


def pair(cfg: VisionConfig) -> tuple[VisionTransformer, torch.nn.Module]:
    ours = randomize_(VisionTransformer(cfg), scale=0.02).eval()
    official = official_for(
        cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_hidden, cfg.pos_grid, cfg.ffn
    ).eval()
    official.load_state_dict(ours.state_dict(), strict=True)
    return ours, official


def compare(ours, official, images, masks=None) -> float:
    cfg = ours.cfg
    with torch.inference_mode():
        got = ours(images, masks=masks)
        # The official encoder takes [0, 1] pixels as they are; our small variants
        # standardise inside the patch embedding (official sizes: mean 0, std 1).
        cls1, cls2, patches = official((images - cfg.input_mean) / cfg.input_std, masks)
    b, h, w, d = got.patch_tokens.shape
    assert cls1.shape == (b, 1, d) and patches.shape == (b, h * w, d)
    return max(
        (got.cls1 - cls1[:, 0]).abs().max().item(),
        (got.cls2 - cls2[:, 0]).abs().max().item(),
        (got.patch_tokens.reshape(b, h * w, d) - patches).abs().max().item(),
    )


@pytest.fixture(scope="module")
def s14():
    torch.manual_seed(0)
    return pair(get_variant("s14").vision)


@pytest.mark.parametrize("size", [224, 112])  # s14's 16×16 table as is, then resized to 8×8
def test_s14_matches_the_official_forward(s14, size):
    ours, official = s14
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    assert compare(ours, official, images) < TOL


def test_standardising_variant_and_masks_match():
    # The official code has no conv stem (our small sizes' patch embedding; it is checked
    # against the plainly written reference in tests/test_vision.py): ti14 without it.
    ours, official = pair(replace(get_variant("ti14").vision, conv_stem=0))
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 98, 126, generator=gen)  # non-square: 7×9 patches
    masks = torch.rand(2, 63, generator=gen) < 0.5
    assert compare(ours, official, images) < TOL
    assert compare(ours, official, images, masks) < TOL


def test_swiglu_variant_matches():
    cfg = VisionConfig(64, 2, 2, _swiglu_hidden(64), ffn="swiglu", pos_grid=4)
    ours, official = pair(cfg)
    images = torch.rand(2, 3, 84, 84, generator=torch.Generator().manual_seed(3))
    assert compare(ours, official, images) < TOL
