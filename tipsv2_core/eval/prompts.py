"""Class-name prompts: the 9 TCL templates of the official zero-shot notebook.

A class's text embedding is the L2-normalised mean of its L2-normalised template
embeddings (method brief §4). The same embeddings serve zero-shot segmentation and
zero-shot classification.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tipsv2_core.eval._common import embed_texts, eval_mode, resolve_device
from tipsv2_core.models.tips import TIPSModel, l2_normalize
from tipsv2_core.text.tokenizer import Tokenizer

TCL_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "a photo of many {}.",
    "a photo of {}s.",
)


def fill_templates(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """All prompts, class-major: [c0·t0, c0·t1, …, c1·t0, …] (C × T strings)."""
    return [t.format(name) for name in class_names for t in templates]


@torch.inference_mode()
def class_text_embeddings(
    model: TIPSModel,
    tokenizer: Tokenizer,
    class_names: Sequence[str],
    templates: Sequence[str] = TCL_TEMPLATES,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Class embeddings [C, D] (float32, on the model's device), L2-normalised.

    For each class: embed every template filled with the class name, L2-normalise each,
    average over templates, L2-normalise again. All C × T prompts go through the text
    tower in batches of `batch_size`.
    """
    if not class_names:
        raise ValueError("class_names is empty")
    if not templates:
        raise ValueError("templates is empty")
    dev = resolve_device(model, device)
    with eval_mode(model):
        emb = embed_texts(model, tokenizer, fill_templates(class_names, templates), dev, batch_size)
    emb = emb.reshape(len(class_names), len(templates), -1).mean(dim=1)
    return l2_normalize(emb)
