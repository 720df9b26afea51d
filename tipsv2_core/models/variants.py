"""Model variants: the official TIPS/TIPSv2 sizes plus small ones for CPU work.

Vision and text towers of one variant share their width (there is no projection layer
between the two towers and the contrastive loss). Names follow the official
file names (`b14`, `l14`, `so400m14`, `g14`); the official inference scripts' letters
(`S`, `B`, `L`, `So400m`, `g`) are accepted as aliases.
"""

from __future__ import annotations

from dataclasses import dataclass

PATCH_SIZE = 14
VOCAB_SIZE = 32000
MAX_TEXT_LEN = 64
# The position-table grid of each generation: TIPS v1 used 16×16, TIPSv2 uses 32×32.
POS_GRID_V1 = 16
POS_GRID_V2 = 32


@dataclass(frozen=True)
class VisionConfig:
    """Shape of a ViT image encoder (official PyTorch port of TIPS, DINOv2 layout)."""

    embed_dim: int  # D
    depth: int  # number of transformer blocks
    num_heads: int
    mlp_hidden: int  # hidden width of the FFN (for SwiGLU: of each of its two halves)
    ffn: str = "mlp"  # "mlp" (GELU) or "swiglu" (ViT-g)
    patch_size: int = PATCH_SIZE
    pos_grid: int = POS_GRID_V2  # G: the learned position table holds 1 + G*G rows
    init_values: float = 1.0  # LayerScale init; the official port loads with 1.0
    # Input standardisation inside the patch embedding, (x - mean) / std on [0, 1] pixels.
    # Official sizes take [0, 1] pixels as they are (mean 0, std 1: no operation, so they
    # stay bit-exact with the released code). Our small sizes standardise: trained from
    # scratch on [0, 1] pixels, a randomly initialised patch embedding sees mostly the
    # mean colour of each patch (every weight's gradient shares the same positive pixel
    # factor), and nano14 learnt no texture in 300 supervised steps; with (x - 0.5) / 0.25
    # it reached 71 % patch accuracy (README, "Learning dense alignment").
    input_mean: float = 0.0
    input_std: float = 1.0
    # Channels of an early-convolution stem in front of the patch projection (layers.
    # PatchEmbed); 0: the official linear patchify. Our small sizes use one: with it the
    # demo's zero-shot mIoU at step 600 went 16.9 -> 30.4 % (README, "Learning dense
    # alignment", item 13); a linear patch embedding leaves every texture feature to
    # four blocks that the contrastive loss trains slowly.
    conv_stem: int = 0


@dataclass(frozen=True)
class TextConfig:
    """Shape of the TIPS text encoder (pre-LN transformer, ReLU MLP, mean pooling)."""

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    vocab_size: int = VOCAB_SIZE
    max_len: int = MAX_TEXT_LEN


@dataclass(frozen=True)
class Variant:
    """A named pair of vision and text configurations."""

    name: str
    vision: VisionConfig
    text: TextConfig
    official: bool  # True for sizes released by Google DeepMind


def _swiglu_hidden(dim: int, mlp_ratio: float = 4.0) -> int:
    # DINOv2's SwiGLUFFNFused keeps the parameter count of a ×4 MLP: 2/3 of the hidden
    # width, rounded up to a multiple of 8 -> 4096 for ViT-g (1536 × 4 = 6144).
    hidden = int(dim * mlp_ratio)
    return (int(hidden * 2 / 3) + 7) // 8 * 8


def _variant(
    name: str,
    dim: int,
    depth: int,
    heads: int,
    mlp: int,
    *,
    text_depth: int = 12,
    text_mlp: int | None = None,
    ffn: str = "mlp",
    official: bool = True,
    pos_grid: int = POS_GRID_V2,
) -> Variant:
    # Only our own sizes standardise their input (see VisionConfig.input_mean) and embed
    # patches with a conv stem of D/2 channels (VisionConfig.conv_stem).
    mean, std = (0.0, 1.0) if official else (0.5, 0.25)
    return Variant(
        name=name,
        vision=VisionConfig(
            dim,
            depth,
            heads,
            mlp,
            ffn=ffn,
            pos_grid=pos_grid,
            input_mean=mean,
            input_std=std,
            conv_stem=0 if official else dim // 2,
        ),
        text=TextConfig(dim, text_depth, heads, text_mlp or 4 * dim),
        official=official,
    )


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        # Official sizes (method brief §1.1/§1.2). S exists in TIPS v1 only (16×16 grid).
        _variant("s14", 384, 12, 6, 1536, pos_grid=POS_GRID_V1),
        _variant("b14", 768, 12, 12, 3072),
        _variant("l14", 1024, 24, 16, 4096),
        # SO400m's text tower mirrors its vision tower: 27 layers, MLP 4304.
        _variant("so400m14", 1152, 27, 16, 4304, text_depth=27, text_mlp=4304),
        _variant("g14", 1536, 40, 24, _swiglu_hidden(1536), text_mlp=6144, ffn="swiglu"),
        # Small sizes for CPU work (demo recipes, tests, students on a laptop).
        _variant("ti14", 192, 12, 3, 768, official=False),
        _variant("nano14", 96, 4, 3, 384, text_depth=4, official=False),
    )
}

ALIASES: dict[str, str] = {
    "S": "s14",
    "B": "b14",
    "L": "l14",
    "So400m": "so400m14",
    "So": "so400m14",
    "so14": "so400m14",
    "g": "g14",
}


def get_variant(name: str) -> Variant:
    """Looks up a variant by name (`b14`) or official letter (`B`); errors list the choices."""
    key = ALIASES.get(name, name)
    if key not in VARIANTS:
        choices = ", ".join(list(VARIANTS) + list(ALIASES))
        raise ValueError(f"unknown variant {name!r}; choose one of: {choices}")
    return VARIANTS[key]
