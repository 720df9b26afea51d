"""The image encoder against the plainly written reference (tests/reference_tips.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import randomize_
from tests.reference_tips import vision_forward
from tipsv2_core.models.tips import TIPSModel

pytestmark = pytest.mark.unit
TOL = 1e-5


def _ref(model, images, **kw):
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    std = {"input_mean": model.cfg.input_mean, "input_std": model.cfg.input_std}
    return vision_forward(sd, images, model.cfg.num_heads, **std, **kw)


@pytest.mark.parametrize("size", [(224, 224), (112, 168), (98, 98), (448, 448)])
def test_forward_matches_reference(nano, size):
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = nano.vision(images)
        cls1, cls2, patches = _ref(nano.vision, images)
    h, w = size[0] // 14, size[1] // 14
    assert out.cls1.shape == (2, 96) and out.patch_tokens.shape == (2, h, w, 96)
    torch.testing.assert_close(out.cls1, cls1, atol=TOL, rtol=0)
    torch.testing.assert_close(out.cls2, cls2, atol=TOL, rtol=0)
    torch.testing.assert_close(out.patch_tokens, patches, atol=TOL, rtol=0)


def test_swiglu_block_matches_reference():
    # g14's FFN, checked on a tiny model with the same block type.
    from dataclasses import replace

    from tipsv2_core.models.variants import get_variant

    v = get_variant("nano14")
    v = replace(v, vision=replace(v.vision, ffn="swiglu", mlp_hidden=256, depth=2))
    model = randomize_(TIPSModel(v), seed=3).vision.eval()
    assert "blocks.0.mlp.w12.weight" in model.state_dict()
    images = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        out = model(images)
        _, _, patches = _ref(model, images)
    torch.testing.assert_close(out.patch_tokens, patches, atol=TOL, rtol=0)


def test_masks_replace_patches_before_the_position_add(nano):
    images = torch.rand(2, 3, 112, 112)
    masks = torch.rand(2, 64, generator=torch.Generator().manual_seed(2)) < 0.75
    with torch.no_grad():
        out = nano.vision(images, masks=masks)
        _, _, patches = _ref(nano.vision, images, masks=masks)
        plain = nano.vision(images)
        # A fully masked image no longer depends on its pixels.
        full = torch.ones(2, 64, dtype=torch.bool)
        a = nano.vision(images, masks=full).cls1
        b = nano.vision(torch.rand(2, 3, 112, 112), masks=full).cls1
    torch.testing.assert_close(out.patch_tokens, patches, atol=TOL, rtol=0)
    assert not torch.allclose(out.patch_tokens, plain.patch_tokens, atol=1e-3)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="masks has shape"):
        nano.vision(images, masks=masks[:, :10])


def test_values_forward_matches_reference(nano):
    images = torch.rand(1, 3, 140, 196)
    with torch.no_grad():
        feats = nano.vision.forward_values(images)
        _, _, ref = _ref(nano.vision, images, values_last=True)
        normal = nano.vision(images).patch_tokens
    assert feats.shape == (1, 10, 14, 96)
    torch.testing.assert_close(feats, ref, atol=TOL, rtol=0)
    assert not torch.allclose(feats, normal, atol=1e-3)  # the trick changes the features


def test_position_table_resize_is_antialiased_bilinear(nano):
    """Compare against PIL's antialiased bilinear resize, an independent implementation."""
    d, g = 96, 32
    table = nano.vision.pos_embed.detach()[0, 1:].reshape(g, g, d).numpy()
    for h, w in [(16, 16), (7, 7), (10, 23)]:
        ours = nano.vision.interpolate_pos_encoding(h, w, torch.float32)[0, 1:].reshape(h, w, d)
        pil = np.stack(
            [
                np.asarray(Image.fromarray(table[..., c]).resize((w, h), Image.BILINEAR))
                for c in range(d)
            ],
            axis=-1,
        )
        np.testing.assert_allclose(ours.detach().numpy(), pil, atol=1e-5)
    # Plain (non-antialiased) bilinear differs when downsampling 32 -> 7.
    plain = F.interpolate(
        torch.from_numpy(table).permute(2, 0, 1)[None], size=(7, 7), mode="bilinear"
    )
    ours = nano.vision.interpolate_pos_encoding(7, 7, torch.float32)[0, 1:].reshape(7, 7, d)
    assert not torch.allclose(plain[0].permute(1, 2, 0), ours, atol=1e-3)


def test_same_grid_keeps_the_table_and_v1_grid_works():
    torch.manual_seed(0)
    v1 = randomize_(TIPSModel("nano14", pos_grid=16)).vision.eval()
    assert v1.pos_embed.shape == (1, 257, 96)
    images = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(v1(images).cls1, _ref(v1, images)[0], atol=TOL, rtol=0)
        assert torch.equal(v1.interpolate_pos_encoding(16, 16, torch.float32), v1.pos_embed)


def test_small_variants_embed_patches_with_a_conv_stem(nano):
    # Each 14-px patch is 2×2 cells of 7 px through the stem, then one 2×2 projection: the
    # token grid is the linear patchify's (the reference tests above check the maths).
    pe = nano.vision.patch_embed
    assert pe.stem is not None and pe.stem[0].weight.shape == (48, 3, 7, 7)
    assert pe.proj.weight.shape == (96, 48, 2, 2)
    assert TIPSModel("b14").vision.cfg.conv_stem == 0  # official sizes: as released
    # A token depends on its own patch's pixels only (no overlap across patches).
    images = torch.rand(1, 3, 112, 112)
    moved = images.clone()
    moved[..., :14, :14] = torch.rand(3, 14, 14)
    with torch.no_grad():
        a, b = pe(images), pe(moved)
    changed = (a - b).abs().amax(-1) > 0
    assert changed[0, 0] and not changed[0, 1:].any()


def test_intermediate_layers(nano):
    images = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        outs = nano.vision.get_intermediate_layers(images, layers=[0, -1])
        last = nano.vision(images)
        n_last = nano.vision.get_intermediate_layers(images, layers=2)
    assert len(outs) == 2 and outs[0].patch_tokens.shape == (1, 8, 8, 96)
    torch.testing.assert_close(outs[1].cls1, last.cls1)
    torch.testing.assert_close(n_last[1].patch_tokens, last.patch_tokens)
    assert not torch.allclose(outs[0].cls1, last.cls1)


def test_batch_invariance(nano):
    images = torch.rand(4, 3, 112, 112)
    with torch.no_grad():
        together = nano.vision(images).cls2
        alone = torch.cat([nano.vision(images[i : i + 1]).cls2 for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_bad_image_size_is_a_clear_error(nano):
    with pytest.raises(ValueError, match="not a multiple of the patch size 14"):
        nano.vision(torch.rand(1, 3, 100, 112))


def test_gradients_flow_to_every_parameter():
    torch.manual_seed(0)
    model = TIPSModel("nano14").vision
    masks = torch.zeros(2, 64, dtype=torch.bool)
    masks[:, :5] = True
    out = model(torch.rand(2, 3, 112, 112), masks=masks)
    (out.cls1.sum() + out.cls2.sum() + out.patch_tokens.sum()).backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert missing == []
