"""The tar format of a shard: writing samples, and reading them back safely in memory.

One sample = the tar members sharing a key (the member name up to its first dot):

    <key>.png | <key>.jpg   RGB image
    <key>.mask.png          optional label map (uint8 or uint16, 255 = ignore)
    <key>.json              {"key", "alt_text", "caption_medium", "caption_long", "source",
                             "width", "height", "split", "classes", "sha256", "phash", …}

Members are never extracted to disk: they are read into memory, and names with path
separators, "..", or leading dots, and anything that is not a regular file, are refused.
Shards are written under a temporary name and renamed when closed, so a `*.tar` is always
complete. Writers set every member's mtime, owner and mode to constants, so the same
samples give byte-identical shards.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tarfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from tipsv2_core.data import tarmember
from tipsv2_core.data.hashing import phash, sha256_hex
from tipsv2_core.data.layout import DatasetError, local_path

__all__ = ["Sample", "ShardWriter", "encode_sample", "read_shard"]

KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,200}")
EXT_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")  # "png", "mask.png"
IMAGE_EXTS = ("png", "jpg", "jpeg")
MASK_EXT = "mask.png"
META_EXT = "json"
MAX_MEMBER_BYTES = 256 << 20
OnError = Literal["raise", "skip"]


@dataclass
class Sample:
    key: str
    image: Image.Image  # RGB
    mask: np.ndarray | None  # [H, W] uint8/uint16 label map, 255 = ignore
    meta: dict[str, Any]
    shard: str = ""
    extra: dict[str, bytes] = field(default_factory=dict)  # members with other extensions


def _png(array_or_image: np.ndarray | Image.Image) -> bytes:
    img = array_or_image
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def encode_sample(
    key: str,
    image: np.ndarray | Image.Image,
    meta: Mapping[str, Any],
    mask: np.ndarray | None = None,
    image_format: Literal["png", "jpg"] = "png",
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """(files, json meta) of one sample; files = {"png"|"jpg", "mask.png", "json": bytes}.

    `image` is [H, W, 3] uint8 or a PIL image, `mask` [H, W] uint8/uint16. The json is
    `meta` plus key, width, height, sha256 (of the encoded image bytes) and phash.
    """
    if not KEY_RE.fullmatch(key):
        raise DatasetError(f"invalid sample key {key!r}: use letters, digits, '_' and '-' only")
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    pil = pil.convert("RGB")
    if image_format == "png":
        data = _png(pil)
    elif image_format == "jpg":
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=95)
        data = buf.getvalue()
    else:
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    files = {image_format: data}
    if mask is not None:
        if mask.shape != (pil.height, pil.width):
            raise ValueError(f"{key}: mask {mask.shape} does not match image {pil.size[::-1]}")
        files[MASK_EXT] = _png(mask)
    full = {**meta, "key": key, "width": pil.width, "height": pil.height,
            "sha256": sha256_hex(data), "phash": phash(pil)}  # fmt: skip
    files[META_EXT] = json.dumps(full, sort_keys=True, separators=(",", ":")).encode()
    return files, full


class ShardWriter:
    """Writes samples into `{prefix}-{NNNNNN}.tar` files in `out_dir`.

    A shard is closed when it holds `max_samples_per_shard` samples or the next sample
    would take it over `max_bytes` (a single larger sample gets a shard of its own). Each
    shard is written as `.{name}.partial` and renamed to its final name on closing. Use
    as a context manager: on an exception the partial shard is deleted.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        prefix: str,
        max_samples_per_shard: int = 1000,
        max_bytes: int = 1 << 30,
    ) -> None:
        if max_samples_per_shard < 1 or max_bytes < 1:
            raise ValueError("max_samples_per_shard and max_bytes must be positive")
        if not KEY_RE.fullmatch(prefix):
            raise ValueError(f"invalid shard prefix {prefix!r}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_samples = max_samples_per_shard
        self.max_bytes = max_bytes
        self.shards: list[Path] = []  # completed shards, in order
        self._file: io.BufferedWriter | None = None
        self._tmp: Path | None = None
        self._offset = 0  # bytes written to the open shard
        self._count = 0
        self._bytes = 0

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._tmp = self.out_dir / f".{name}.partial"
        # Stays open across write() calls and is closed in _finish() or abort(). Members
        # are laid out as tarfile's PAX format does it (tarmember.py), byte for byte.
        self._file = open(self._tmp, "wb")  # noqa: SIM115
        self._count = self._bytes = self._offset = 0

    def _finish(self) -> None:
        if self._file is None:
            return
        assert self._tmp is not None
        self._file.write(tarmember.end_of_archive(self._offset))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self._tmp.with_name(self._tmp.name[1 : -len(".partial")])
        os.replace(self._tmp, final)
        self.shards.append(final)
        self._file = self._tmp = None

    @property
    def current(self) -> str:
        """File name of the shard the next sample goes to (once written)."""
        return f"{self.prefix}-{len(self.shards):06d}.tar"

    def write(self, key: str, files: Mapping[str, bytes]) -> str:
        """Adds one sample (extension -> bytes); returns the file name of its shard."""
        if not KEY_RE.fullmatch(key):
            raise DatasetError(f"invalid sample key {key!r}: use letters, digits, '_' and '-'")
        bad = [ext for ext in files if not EXT_RE.fullmatch(ext)]
        if bad:
            raise DatasetError(f"sample {key!r}: invalid member extensions {bad}")
        size = sum(512 + -(-len(b) // 512) * 512 for b in files.values())
        if self._file is not None and (
            self._count >= self.max_samples or self._bytes + size > self.max_bytes
        ):
            self._finish()
        if self._file is None:
            self._open()
        assert self._file is not None
        for ext, data in files.items():
            parts = tarmember.member(f"{key}.{ext}", data)
            self._file.writelines(parts)
            self._offset += sum(map(len, parts))
        self._count += 1
        self._bytes += size
        return self.current

    def close(self) -> list[Path]:
        """Closes the open shard; returns every completed shard."""
        self._finish()
        return self.shards

    def abort(self) -> None:
        """Drops the open shard without renaming it (completed shards stay)."""
        if self._file is not None:
            assert self._tmp is not None
            # On a full disk closing flushes into the same ENOSPC: the shard is dropped
            # either way, and the error being handled is the one to report.
            with contextlib.suppress(OSError):
                self._file.close()
            self._tmp.unlink(missing_ok=True)
            self._file = self._tmp = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _split_name(shard: str, name: str) -> tuple[str, str]:
    """(key, extension) of a member name, refusing anything that could leave a directory."""
    if "/" in name or "\\" in name or ".." in name or name.startswith(".") or "\0" in name:
        raise DatasetError(f"{shard}: unsafe member name {name!r} (path separator or '..')")
    key, dot, ext = name.partition(".")
    if not dot or not KEY_RE.fullmatch(key):
        raise DatasetError(f"{shard}: member {name!r} is not <key>.<extension>")
    return key, ext


def problem(on_error: OnError, message: str) -> None:
    """Raises DatasetError(message), or with on_error="skip" warns and returns."""
    if on_error == "raise":
        raise DatasetError(message)
    warnings.warn(message, stacklevel=3)


def _decode(shard: str, key: str, files: dict[str, bytes]) -> Sample:
    """A Sample from its member bytes; DatasetError names the shard, key and problem."""
    where = f"{shard}: sample {key!r}"
    image_ext = next((e for e in IMAGE_EXTS if e in files), None)
    if image_ext is None:
        raise DatasetError(f"{where}: no image member (.png/.jpg) among {sorted(files)}")
    if META_EXT not in files:
        raise DatasetError(f"{where}: no .json member")
    try:
        meta = json.loads(files[META_EXT])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{where}: unreadable .json ({e})") from None
    if not isinstance(meta, dict) or meta.get("key", key) != key:
        raise DatasetError(f"{where}: .json is not an object with key {key!r}")
    try:
        image = Image.open(io.BytesIO(files[image_ext]))
        image = image.convert("RGB")  # decodes fully: a truncated file fails here
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{where}: undecodable .{image_ext} ({e})") from None
    mask = None
    if MASK_EXT in files:
        try:
            mask = np.array(Image.open(io.BytesIO(files[MASK_EXT])))
        except (OSError, ValueError) as e:
            raise DatasetError(f"{where}: undecodable .{MASK_EXT} ({e})") from None
        if mask.shape != (image.height, image.width):
            raise DatasetError(f"{where}: mask {mask.shape} does not match image {image.size}")
    used = {image_ext, MASK_EXT, META_EXT}
    extra = {e: b for e, b in files.items() if e not in used}
    return Sample(key, image, mask, meta, shard, extra)


def _groups(path: Path, shard: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, in file order, read in memory."""
    key, files, seen = None, {}, set()
    with tarfile.open(path, mode="r|") as tar:
        for member in tar:
            k, ext = _split_name(shard, member.name)
            if not member.isreg():
                raise DatasetError(f"{shard}: member {member.name!r} is not a regular file")
            if member.size > MAX_MEMBER_BYTES:
                raise DatasetError(
                    f"{shard}: member {member.name!r} is too large ({member.size} B)"
                )
            if k != key:
                if key is not None:
                    yield key, files
                if k in seen:
                    raise DatasetError(f"{shard}: sample {k!r} appears twice")
                key, files = k, {}
                seen.add(k)
            reader = tar.extractfile(member)
            assert reader is not None
            files[ext] = reader.read()
            if len(files[ext]) != member.size:
                raise tarfile.ReadError(f"member {member.name!r} is truncated")
    if key is not None:
        yield key, files


# Public names for readers that inspect shards without iterating them (the validation gate).
decode_sample = _decode
member_key = _split_name


def read_shard(
    shard: str | os.PathLike, on_error: OnError = "raise", name: str | None = None
) -> Iterator[Sample]:
    """Samples of one tar shard, in order.

    A corrupt or truncated shard or a broken sample raises DatasetError naming the shard
    and key; with `on_error="skip"` a broken sample is skipped, and a corrupt shard is
    abandoned where it breaks, each with a warning. Unsafe member names always raise.
    """
    path = local_path(shard)
    label = name or str(path)
    if not path.is_file():
        raise DatasetError(f"{label}: no such shard")
    last = None
    try:
        for key, files in _groups(path, label):
            last = key
            try:
                sample = _decode(label, key, files)
            except DatasetError as e:
                problem(on_error, str(e))
                continue
            yield sample
    except (tarfile.TarError, EOFError, OSError) as e:
        after = f" after sample {last!r}" if last else " at its start"
        problem(on_error, f"{label}: corrupt or truncated tar{after} ({e})")
