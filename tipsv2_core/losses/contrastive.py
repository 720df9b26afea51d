"""Symmetric softmax InfoNCE (CLIP) between image and text embeddings.

TIPSv2 has no projection layer: the embeddings are the L2-normalised CLS token and pooled
text vector, and logits = cos / τ with a learnable temperature τ. When distributed, each
worker scores its images against the texts of *all* workers (and vice versa), with
gradients flowing back through the gather, as in open_clip's `local_loss` mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tipsv2_core.distributed import all_gather_with_grad, rank
from tipsv2_core.precision import full_precision


def clip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: torch.Tensor
) -> torch.Tensor:
    """image_emb, text_emb: [b, D] L2-normalised, row i of each is a pair; τ: scalar.

    Returns ½ (CE(image→text) + CE(text→image)) averaged over the local rows; with W
    workers the candidates are the W·b gathered rows.
    """
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image {tuple(image_emb.shape)} and text {tuple(text_emb.shape)} embeddings differ"
        )
    # Logits in fp32 under bf16 autocast: a bf16 cosine carries ~4e-3 of rounding, which
    # 1/τ (up to 1000) would turn into whole units of logit. (No-op in fp32.)
    image_emb, text_emb = image_emb.float(), text_emb.float()
    with full_precision(image_emb.device.type):
        all_images = all_gather_with_grad(image_emb)
        all_texts = all_gather_with_grad(text_emb)
        b = image_emb.shape[0]
        labels = torch.arange(b, device=image_emb.device) + rank() * b
        tau = temperature.reshape(())
        logits_i2t = image_emb @ all_texts.T / tau  # [b, W*b]
        logits_t2i = text_emb @ all_images.T / tau  # [b, W*b]
        return 0.5 * (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels))
