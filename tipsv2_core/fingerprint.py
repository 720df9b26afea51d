"""What identifies a model's weights: one hash, the same for a model wherever it lies.

An embeddings directory records the fingerprint of the model that embedded its images,
and whatever later embeds a query against it (`tipsv2 search`, the server's search
route, also after a live swap) must hash to the same value: vectors of two models share
no space, and comparing them gives answers that look right and are not.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tipsv2_core.errors import CheckpointError


def model_fingerprint(path: Path) -> str:
    """The sha256 of an export's `export_meta.json` (written once per export: it holds
    the parity measured on these weights) or of a checkpoint's `model.safetensors`."""
    from tipsv2_core.export import is_onnx_export
    from tipsv2_core.export.runtime import META_FILE, export_root
    from tipsv2_core.models.io import is_native

    path = Path(path)
    if is_onnx_export(path):
        root = export_root(path)
        assert root is not None
        file = root / META_FILE
    elif is_native(path):
        file = path / "model.safetensors"
    else:
        raise CheckpointError(f"{path}: neither an ONNX export nor a native checkpoint")
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
