"""One indexed sample's image read back from its dataset shard, as a small PNG (for the
result grid of the server's page).

Only keys the index holds are looked up, and only in the shards the embeddings manifest
names under its own dataset directory: a caller's string is never a path. The member
offsets of a shard are read once (tar headers only) and cached.
"""

from __future__ import annotations

import io
import tarfile
import threading
from pathlib import Path

from PIL import Image

from tipsv2_core.data.tarshards import IMAGE_EXTS, MAX_MEMBER_BYTES

THUMBNAIL = 256  # px, the longer side


class ShardImages:
    """key -> PNG bytes of its image, from the tar shards of one dataset directory."""

    def __init__(self, dataset: str | Path) -> None:
        self.root = Path(dataset).resolve()
        self._members: dict[str, dict[str, tuple[int, int]]] = {}
        self._lock = threading.Lock()

    def _offsets(self, shard: str) -> dict[str, tuple[int, int]]:
        with self._lock:
            if shard not in self._members:
                path = (self.root / shard).resolve()
                if not path.is_relative_to(self.root):
                    raise KeyError(shard)
                found: dict[str, tuple[int, int]] = {}
                with tarfile.open(path, "r:") as tar:
                    for m in tar:
                        key, _, ext = m.name.partition(".")
                        if m.isreg() and ext in IMAGE_EXTS and m.size <= MAX_MEMBER_BYTES:
                            found[key] = (m.offset_data, m.size)
                self._members[shard] = found
            return self._members[shard]

    def thumbnail(self, shard: str, key: str, size: int = THUMBNAIL) -> bytes:
        """The image of `key` in `shard`, at most size×size, as PNG (KeyError if absent)."""
        offset, length = self._offsets(shard)[key]
        with open(self.root / shard, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            img.thumbnail((size, size), Image.BILINEAR)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
        return buf.getvalue()
