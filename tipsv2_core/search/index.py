"""The nearest-neighbour index over an embeddings directory: faiss (inner product over
L2-normalised vectors, i.e. cosine similarity), one index per CLS token, saved beside
the Parquet parts in faiss's own binary format (nothing is unpickled).

    <dir>/index/cls1.faiss, cls2.faiss   faiss.write_index
    <dir>/index/index.json               kind, rows, dim, and the manifest digest it was
                                         built from; a different digest -> rebuilt

Rows of the index are the rows of `load_embeddings` (part-name order), so a hit's id is
the position of its key. `flat` is exact search; `hnsw` (graph, approximate) suits
millions of rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from tipsv2_core.atomic import atomic_file
from tipsv2_core.search.store import (
    CLS,
    INDEX_DIR,
    MANIFEST_FILE,
    EmbeddingsError,
    load_embeddings,
    open_embeddings,
)

INDEX_KINDS = ("flat", "hnsw")
_INFO = "index.json"


def _manifest_digest(root: Path) -> str:
    return hashlib.sha256((root / MANIFEST_FILE).read_bytes()).hexdigest()


def _make(kind: str, dim: int) -> faiss.Index:
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 64
        return index
    raise ValueError(f"index kind {kind!r}; expected one of {INDEX_KINDS}")


def build_index(path: str | os.PathLike, kind: str = "flat") -> Path:
    """Builds and saves one index per CLS token of a complete embeddings directory."""
    root = Path(path)
    manifest = open_embeddings(root)
    emb = load_embeddings(root)
    out = root / INDEX_DIR
    out.mkdir(exist_ok=True)
    for cls in CLS:
        index = _make(kind, manifest.dim)
        index.add(np.ascontiguousarray(emb.vectors[cls]))
        with atomic_file(out / f"{cls}.faiss") as tmp:
            faiss.write_index(index, str(tmp))
    info = {"kind": kind, "rows": len(emb.keys), "dim": manifest.dim,
            "manifest_sha256": _manifest_digest(root)}  # fmt: skip
    with atomic_file(out / _INFO) as tmp:  # written last: the index is whole when it names it
        tmp.write_text(json.dumps(info, indent=2))
    return out


def ensure_index(path: str | os.PathLike, kind: str = "flat") -> dict:
    """The index's info, built first when missing, of another kind, or older than the
    manifest (the embeddings changed since)."""
    root = Path(path)
    info = _current(root)
    if info is None or info["kind"] != kind:
        build_index(root, kind)
        info = _current(root)
        assert info is not None
    return info


def _current(root: Path) -> dict | None:
    info_path = root / INDEX_DIR / _INFO
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    if info.get("manifest_sha256") != _manifest_digest(root):
        return None
    if not all((root / INDEX_DIR / f"{c}.faiss").is_file() for c in CLS):
        return None
    return info


@dataclass
class Hit:
    key: str
    score: float  # cosine similarity
    caption: str | None
    shard: str


class VectorIndex:
    """A loaded index with its keys: `search(queries [Q, D], k)` -> Q lists of hits."""

    def __init__(self, path: str | os.PathLike, cls: str = "cls1", kind: str = "flat") -> None:
        """kind: what to build when no current index is there (an existing one is used)."""
        if cls not in CLS:
            raise ValueError(f"--cls {cls!r}; expected one of {CLS}")
        root = Path(path)
        manifest = open_embeddings(root)
        info = _current(root) or ensure_index(root, kind)  # built on first use
        emb = load_embeddings(root)
        self.root = root
        self.cls = cls
        self.kind = info["kind"]
        self.manifest = manifest
        self.keys, self.shards, self.captions = emb.keys, emb.shards, emb.captions
        self.rows = {k: i for i, k in enumerate(self.keys)}
        self.index = faiss.read_index(str(root / INDEX_DIR / f"{cls}.faiss"))
        if self.index.ntotal != len(self.keys) or self.index.d != manifest.dim:
            raise EmbeddingsError(
                f"{root / INDEX_DIR}: {self.index.ntotal} vectors of {self.index.d} dims, "
                f"but the parts hold {len(self.keys)} of {manifest.dim}; delete the folder "
                "to rebuild it"
            )

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return len(self.keys)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """queries [Q, D] (L2-normalised, as the model's embeddings are) -> top-k hits each,
        best first."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(
                f"query of {q.shape[1]} dims, but the index holds {self.dim}-dim vectors "
                "(embedded by another model?)"
            )
        k = max(1, min(int(k), len(self.keys)))
        scores, ids = self.index.search(q, k)
        return [
            [self._hit(int(i), float(s)) for s, i in zip(row_s, row_i, strict=True) if i >= 0]
            for row_s, row_i in zip(scores, ids, strict=True)
        ]

    def _hit(self, row: int, score: float) -> Hit:
        caption = self.captions[row] if self.captions else None
        return Hit(self.keys[row], score, caption, self.shards[row])
