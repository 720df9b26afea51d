"""TIPSv2 training losses, one per file."""

from tipsv2_core.losses.contrastive import clip_loss
from tipsv2_core.losses.dino_cls import DINOLoss
from tipsv2_core.losses.distill import cosine_distill_loss
from tipsv2_core.losses.ibot_patch import iBOTPatchLoss

__all__ = ["DINOLoss", "clip_loss", "cosine_distill_loss", "iBOTPatchLoss"]
