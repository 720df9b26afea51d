"""Crops, flips and patch masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tipsv2_core.data.caption_sampling import STRATEGIES, sample_captions
from tipsv2_core.data.masking import block_mask, make_mask, random_mask
from tipsv2_core.data.views import ViewConfig, make_views

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.75])
@pytest.mark.parametrize("fn", [random_mask, block_mask])
def test_masks_have_the_exact_ratio(fn, ratio):
    rng = np.random.default_rng(0)
    for h, w in [(8, 8), (16, 16), (7, 10)]:
        m = fn(h, w, ratio, rng)
        assert m.shape == (h * w,) and m.dtype == bool and m.sum() == round(ratio * h * w)


def test_block_masks_are_spatially_clustered():
    rng = np.random.default_rng(1)

    def neighbours(m, h=16, w=16):
        g = m.reshape(h, w)
        same = (g[1:] & g[:-1]).sum() + (g[:, 1:] & g[:, :-1]).sum()
        return same / max(g.sum(), 1)

    block = np.mean([neighbours(block_mask(16, 16, 0.4, rng)) for _ in range(20)])
    rand = np.mean([neighbours(random_mask(16, 16, 0.4, rng)) for _ in range(20)])
    assert block > rand + 0.3


def test_mask_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown mask mode"):
        make_mask(4, 4, 0.5, "grid", rng)
    with pytest.raises(ValueError, match="mask ratio 1.0"):
        make_mask(4, 4, 1.0, "random", rng)


def test_views_shapes_range_and_determinism():
    arr = (np.random.default_rng(0).random((150, 200, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(arr)
    cfg = ViewConfig(global_size=112, local_size=56, num_local=6)
    g, loc = make_views(img, cfg, np.random.default_rng(5))
    assert g.shape == (3, 112, 112) and loc.shape == (6, 3, 56, 56)
    assert float(g.min()) >= 0.0 and float(g.max()) <= 1.0
    g2, loc2 = make_views(img, cfg, np.random.default_rng(5))
    assert torch.equal(g, g2) and torch.equal(loc, loc2)
    g3, _ = make_views(img, cfg, np.random.default_rng(6))
    assert not torch.equal(g, g3)
    _, none = make_views(img, ViewConfig(112, 56, num_local=0), np.random.default_rng(0))
    assert none.shape == (0, 3, 56, 56)


def test_flip_is_a_mirror():
    arr = np.zeros((112, 112, 3), np.uint8)
    arr[:, :56] = 255  # left half white
    img = Image.fromarray(arr)
    flipped = ViewConfig(112, 56, 0, global_scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    kept = ViewConfig(112, 56, 0, global_scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    a, _ = make_views(img, flipped, np.random.default_rng(0))
    b, _ = make_views(img, kept, np.random.default_rng(0))
    torch.testing.assert_close(a, torch.flip(b, dims=[2]))


def test_caption_strategies():
    meta = {"key": "k", "alt_text": "A", "caption_medium": "M", "caption_long": "L"}
    rng = np.random.default_rng(0)
    draws = [sample_captions(meta, "two_cls_multi", rng) for _ in range(200)]
    assert {d[0] for d in draws} == {"A"}
    cls2 = [d[1] for d in draws]
    assert set(cls2) == {"M", "L"} and 70 < cls2.count("M") < 130  # uniform draw
    assert sample_captions(meta, "alt_only", rng) == ("A", None)
    assert sample_captions(meta, "long_only", rng) == ("L", None)
    assert {sample_captions(meta, "one_cls_multi", rng)[0] for _ in range(50)} == {"A", "M", "L"}
    assert set(STRATEGIES) >= {
        "two_cls_multi",
        "two_cls_medium",
        "one_cls_multi",
        "alt_only",
        "long_only",
    }
    with pytest.raises(ValueError, match="no 'caption_long'"):
        sample_captions({"key": "x", "alt_text": "a"}, "long_only", rng)
