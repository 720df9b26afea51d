"""Parameter names, shapes and counts of every official variant, from an independent table."""

from __future__ import annotations

import pytest
import torch

from tipsv2_core.models.tips import TIPSModel
from tipsv2_core.models.variants import VARIANTS, get_variant

pytestmark = pytest.mark.unit

# name: (dim, depth, heads, ffn hidden, ffn kind, text depth, text mlp)  — method brief §1.
OFFICIAL = {
    "s14": (384, 12, 6, 1536, "mlp", 12, 1536),
    "b14": (768, 12, 12, 3072, "mlp", 12, 3072),
    "l14": (1024, 24, 16, 4096, "mlp", 12, 4096),
    "so400m14": (1152, 27, 16, 4304, "mlp", 27, 4304),
    "g14": (1536, 40, 24, 4096, "swiglu", 12, 6144),
}

# Released parameter counts: vision with the 16×16 / 32×32 grid, text with vocab 32000.
COUNTS = {
    "s14": (21_629_568, 21_924_480, 33_582_336),
    "b14": (85_726_464, 86_316_288, 109_632_000),
    "l14": (303_229_952, 304_016_384, 183_924_736),
    "so400m14": (412_509_168, 413_393_904, 448_332_912),
    "g14": (1_134_772_736, 1_135_952_384, 389_133_312),
}


def expected_vision(dim, depth, hidden, ffn, grid):
    shapes = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + grid * grid, dim),
        "register_tokens": (1, 1, dim),
        "mask_token": (1, dim),
        "patch_embed.proj.weight": (dim, 3, 14, 14),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    for i in range(depth):
        p = f"blocks.{i}"
        shapes |= {
            f"{p}.norm1.weight": (dim,),
            f"{p}.norm1.bias": (dim,),
            f"{p}.attn.qkv.weight": (3 * dim, dim),
            f"{p}.attn.qkv.bias": (3 * dim,),
            f"{p}.attn.proj.weight": (dim, dim),
            f"{p}.attn.proj.bias": (dim,),
            f"{p}.ls1.gamma": (dim,),
            f"{p}.norm2.weight": (dim,),
            f"{p}.norm2.bias": (dim,),
            f"{p}.ls2.gamma": (dim,),
        }
        if ffn == "swiglu":
            shapes |= {
                f"{p}.mlp.w12.weight": (2 * hidden, dim),
                f"{p}.mlp.w12.bias": (2 * hidden,),
                f"{p}.mlp.w3.weight": (dim, hidden),
                f"{p}.mlp.w3.bias": (dim,),
            }
        else:
            shapes |= {
                f"{p}.mlp.fc1.weight": (hidden, dim),
                f"{p}.mlp.fc1.bias": (hidden,),
                f"{p}.mlp.fc2.weight": (dim, hidden),
                f"{p}.mlp.fc2.bias": (dim,),
            }
    return shapes


def expected_text(dim, depth, mlp):
    shapes = {
        "token_embedding.weight": (32000, dim),
        "ln_final.weight": (dim,),
        "ln_final.bias": (dim,),
    }
    for i in range(depth):
        p = f"transformer.resblocks.{i}"
        shapes |= {
            f"{p}.attn.in_proj_weight": (3 * dim, dim),
            f"{p}.attn.in_proj_bias": (3 * dim,),
            f"{p}.attn.out_proj.weight": (dim, dim),
            f"{p}.attn.out_proj.bias": (dim,),
            f"{p}.ln_1.weight": (dim,),
            f"{p}.ln_1.bias": (dim,),
            f"{p}.mlp.c_fc.weight": (mlp, dim),
            f"{p}.mlp.c_fc.bias": (mlp,),
            f"{p}.mlp.c_proj.weight": (dim, mlp),
            f"{p}.mlp.c_proj.bias": (dim,),
            f"{p}.ln_2.weight": (dim,),
            f"{p}.ln_2.bias": (dim,),
        }
    return shapes


def meta_model(name: str, grid: int) -> TIPSModel:
    with torch.device("meta"):  # g14 has 1.5B parameters: build it without memory
        return TIPSModel(name, pos_grid=grid)


@pytest.mark.parametrize("name", list(OFFICIAL))
@pytest.mark.parametrize("grid", [16, 32])
def test_state_dict_names_and_shapes(name, grid):
    dim, depth, _, hidden, ffn, tdepth, tmlp = OFFICIAL[name]
    model = meta_model(name, grid)
    vision = {k: tuple(v.shape) for k, v in model.vision.state_dict().items()}
    text = {k: tuple(v.shape) for k, v in model.text.state_dict().items()}
    assert vision == expected_vision(dim, depth, hidden, ffn, grid)
    assert text == expected_text(dim, tdepth, tmlp)
    assert list(model.state_dict())[-1] == "temperature" or "temperature" in model.state_dict()


@pytest.mark.parametrize("name", list(COUNTS))
def test_parameter_counts_match_the_release(name):
    v16, v32, txt = COUNTS[name]
    for grid, want in ((16, v16), (32, v32)):
        model = meta_model(name, grid)
        assert sum(p.numel() for p in model.vision.parameters()) == want
        assert sum(p.numel() for p in model.text.parameters()) == txt  # temperature excluded


def test_heads_and_ffn_follow_the_table():
    for name, (dim, depth, heads, hidden, ffn, tdepth, _) in OFFICIAL.items():
        v = get_variant(name)
        assert (v.vision.embed_dim, v.vision.depth, v.vision.num_heads) == (dim, depth, heads)
        assert (v.vision.mlp_hidden, v.vision.ffn, v.text.depth) == (hidden, ffn, tdepth)
        assert v.text.num_heads == heads and v.vision.patch_size == 14


def test_small_cpu_variants_exist_and_are_small():
    small = [v for v in VARIANTS.values() if not v.official]
    assert len(small) >= 2
    for v in small:
        with torch.device("meta"):
            n = sum(p.numel() for p in TIPSModel(v).vision.parameters())
        assert n < 10_000_000


def test_aliases_and_unknown_variant():
    assert get_variant("So400m").name == "so400m14"
    assert get_variant("g").name == "g14"
    with pytest.raises(ValueError, match="unknown variant 'h14'.*b14"):
        get_variant("h14")
