"""The validation gate's look inside the shards: every shard the manifest names is opened.

The manifest says which samples each shard holds; a shard that was deleted, truncated or
rewritten would otherwise pass the gate (which reads the manifest) and fail training much
later. For each shard `inspect_shards` reads the tar headers (cheap: the data is skipped),
compares the sample keys with the manifest's, checks that every sample has its image and
JSON members and that no member runs past the end of the file, and fully decodes a few
samples (the first and last, and more with `decode_per_shard`). The result is one row
per shard with its problem, "" when there is none.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from components import storage
from tipsv2_core.data.layout import DatasetError, local_path
from tipsv2_core.data.tarshards import IMAGE_EXTS, META_EXT, decode_sample, member_key

MAX_KEYS_NAMED = 3  # keys a problem names before "…"


def _names(keys: Sequence[str]) -> str:
    shown = ", ".join(sorted(keys)[:MAX_KEYS_NAMED])
    return shown + (f", … ({len(keys)} in all)" if len(keys) > MAX_KEYS_NAMED else "")


@contextlib.contextmanager
def _local_shard(root: str, shard: str) -> Iterator[Path | None]:
    """The shard as a local file (downloaded from S3 into a temporary folder), or None."""
    if not storage.parse(root).is_s3:
        path = local_path(root) / shard
        yield path if path.is_file() else None
        return
    uri = f"{root.rstrip('/')}/{shard}"
    with tempfile.TemporaryDirectory(prefix="tipsv2-shard-") as tmp:
        dest = Path(tmp) / "shard.tar"
        try:
            storage.download_file(uri, dest)
        except FileNotFoundError:
            yield None
            return
        yield dest


def shard_problem(path: Path, shard: str, keys: Sequence[str], decode_per_shard: int) -> str:
    """What is wrong with one shard that should hold `keys` ("" when nothing is)."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            members = tar.getmembers()
            size = path.stat().st_size
            groups: dict[str, dict[str, tarfile.TarInfo]] = defaultdict(dict)
            for m in members:
                if not m.isreg():
                    return f"member {m.name!r} is not a regular file"
                if m.offset_data + m.size > size:
                    return f"truncated: member {m.name!r} runs past the end of the file"
                key, ext = member_key(shard, m.name)
                groups[key][ext] = m
            missing = [k for k in keys if k not in groups]
            wanted = set(keys)
            extra = [k for k in groups if k not in wanted]
            if missing or extra:
                parts = [f"holds {len(groups)} samples, the manifest names {len(set(keys))}"]
                if missing:
                    parts.append(f"missing {_names(missing)}")
                if extra:
                    parts.append(f"not in the manifest {_names(extra)}")
                return "; ".join(parts)
            for key, files in groups.items():
                if META_EXT not in files or not any(e in files for e in IMAGE_EXTS):
                    return f"sample {key!r} lacks its image or .json member ({sorted(files)})"
            order = list(groups)
            picks = {order[0], order[-1]} if order else set()
            step = max(1, len(order) // max(decode_per_shard, 1))
            picks.update(order[::step][:decode_per_shard])
            for key in sorted(picks):
                blobs = {}
                for ext, m in groups[key].items():
                    reader = tar.extractfile(m)
                    assert reader is not None
                    blobs[ext] = reader.read()
                decode_sample(shard, key, blobs)
    except DatasetError as e:
        return str(e).removeprefix(f"{shard}: ")
    except (tarfile.TarError, EOFError, OSError) as e:
        return f"corrupt or truncated tar ({e})"
    return ""


def inspect_shards(
    root: str | os.PathLike[str], manifest: Mapping[str, Sequence[Any]], decode_per_shard: int
) -> list[dict[str, str]]:
    """One row {"shard", "problem"} per shard the manifest names (columns key, shard)."""
    by_shard: dict[str, list[str]] = defaultdict(list)
    for key, shard in zip(manifest["key"], manifest["shard"], strict=True):
        by_shard[str(shard)].append(str(key))
    rows = []
    for shard, keys in sorted(by_shard.items()):
        if Path(shard).is_absolute() or ".." in Path(shard).parts:
            rows.append({"shard": shard, "problem": "leaves the dataset directory"})
            continue
        with _local_shard(os.fspath(root), shard) as path:
            if path is None:
                problem = "missing: the manifest names it but it does not exist"
            else:
                problem = shard_problem(path, shard, keys, decode_per_shard)
        rows.append({"shard": shard, "problem": problem})
    return rows
