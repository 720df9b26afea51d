"""TIPS/TIPSv2 encoders with the official checkpoints' parameter names."""

from tipsv2_core.models.text import TextEncoder
from tipsv2_core.models.tips import TIPSModel, l2_normalize
from tipsv2_core.models.variants import VARIANTS, TextConfig, Variant, VisionConfig, get_variant
from tipsv2_core.models.vision import VisionOutput, VisionTransformer

__all__ = [
    "VARIANTS",
    "TIPSModel",
    "TextConfig",
    "TextEncoder",
    "Variant",
    "VisionConfig",
    "VisionOutput",
    "VisionTransformer",
    "get_variant",
    "l2_normalize",
]
