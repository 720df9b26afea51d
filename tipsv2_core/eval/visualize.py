"""What a person tries first with a new model: segment an image by class names, and look
at its patch features as an RGB image (PCA, as in the paper's figures)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from tipsv2_core.eval.predictions import palette
from tipsv2_core.eval.prompts import class_text_embeddings
from tipsv2_core.eval.zeroshot_seg import predict_scores, prepare_image, upsample_argmax
from tipsv2_core.models.tips import TIPSModel
from tipsv2_core.text.tokenizer import Tokenizer


@torch.inference_mode()
def segment_image(
    model: TIPSModel,
    tokenizer: Tokenizer,
    image: Image.Image,
    class_names: list[str],
    *,
    eval_size: int = 448,
    mode: str = "slide",
) -> np.ndarray:
    """Zero-shot label map [H, W] (indices into class_names) at the image's own size."""
    if not class_names:
        raise ValueError("give at least one class name")
    model.eval()
    class_emb = class_text_embeddings(model, tokenizer, class_names)
    prepared = prepare_image(image, eval_size)
    scores = predict_scores(model, prepared, class_emb, mode=mode)
    return upsample_argmax(scores, (image.height, image.width)).cpu().numpy()


def overlay(
    image: Image.Image, labels: np.ndarray, num_classes: int, alpha: float = 0.5
) -> Image.Image:
    """The image blended with one fixed colour per class."""
    colours = palette(num_classes)[labels]
    blend = (1 - alpha) * np.asarray(image.convert("RGB"), np.float32) + alpha * colours
    return Image.fromarray(blend.astype(np.uint8))


@torch.inference_mode()
def pca_features(model: TIPSModel, image: Image.Image, image_size: int = 448) -> Image.Image:
    """The first three principal components of the patch tokens as RGB, [h, w] patches
    upsampled (nearest) to image_size × image_size."""
    model.eval()
    x = image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(x, np.float32) / 255.0).permute(2, 0, 1)[None]
    tokens = model.vision(pixels).patch_tokens[0]  # [h, w, D]
    h, w, d = tokens.shape
    flat = tokens.reshape(-1, d).float()
    flat = flat - flat.mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(flat, full_matrices=False)
    comps = flat @ v[:3].T  # [h*w, 3]
    lo, hi = comps.min(dim=0).values, comps.max(dim=0).values
    rgb = ((comps - lo) / (hi - lo).clamp_min(1e-8)).reshape(h, w, 3)
    img = Image.fromarray((rgb.numpy() * 255).astype(np.uint8))
    return img.resize((image_size, image_size), Image.NEAREST)
