"""`tipsv2 search`: a query embedded by the model that embedded the images, and its
nearest neighbours in the faiss index (tipsv2_core/search/index.py).

The model is the one the embeddings manifest records (or `model`, when it moved); its
weights must hash to the recorded fingerprint, so that a query is never matched against
another model's vectors (e.g. after `models:/NAME@champion` moved on).
"""

from __future__ import annotations

import os
from pathlib import Path

from components.embed_dataset import fetch_embeddings, resolve_model
from tipsv2_core.fingerprint import model_fingerprint
from tipsv2_core.inference import load_image
from tipsv2_core.search.index import Hit, VectorIndex
from tipsv2_core.search.store import EmbeddingsError, open_embeddings
from tipsv2_core.serving.servable import Servable, load_servable


def query_model(
    index: str | os.PathLike, model: str | None = None, tracking_uri: str | None = None
) -> Servable:
    """The model that embedded `index`'s images, checked against the recorded hash."""
    settings = open_embeddings(fetch_embeddings(index)).settings
    path = resolve_model(model or settings.model, tracking_uri)
    if model_fingerprint(path) != settings.fingerprint:
        raise EmbeddingsError(
            f"{model or settings.model} is not the model that embedded {index} (its weights "
            "differ from the recorded fingerprint); pass --model with that model, or embed "
            "the dataset again"
        )
    return load_servable(path)


def search(
    index: str | os.PathLike,
    *,
    text: str | None = None,
    image: str | os.PathLike | None = None,
    k: int = 5,
    cls: str = "cls1",
    model: str | None = None,
    tracking_uri: str | None = None,
) -> list[Hit]:
    """The k nearest indexed images to a text (or to an image), best first."""
    if (text is None) == (image is None):
        raise ValueError("give a text query or an image (one of them)")
    if k <= 0:
        raise ValueError(f"-k must be positive, got {k}")
    index = fetch_embeddings(index)  # an s3:// index: its local mirror
    vectors = VectorIndex(index, cls)
    servable = query_model(index, model, tracking_uri)
    if text is not None:
        if not servable.has_text:
            raise EmbeddingsError(f"{servable.source}: no text encoder or tokenizer for a query")
        query = servable.embed_texts([text])
    else:
        size = vectors.manifest.settings.image_size
        pixels = load_image(Path(image), size)[None].numpy()
        query = servable.embed_images(pixels, patch_tokens=False)[cls]
    return vectors.search(query, k)[0]
