"""Samples of a WebDataset tar shard (as img2dataset writes them), read in memory.

Members sharing a key (the member path up to the first dot of its file name) form one
sample: `000123.jpg`, `000123.txt`, `000123.json`. Nothing is ever extracted: member data
is read into memory, so a member named `../x` or `/etc/x` cannot write anywhere. Such
names, links and device files are reported as `unsafe_member` (their data is not read),
oversized members as `file_too_large`, and a shard that breaks off mid-way yields one
`unreadable_file` entry after the samples read until then.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO


@dataclass
class TarSample:
    """The members of one key ({extension: bytes}), or the problem that replaced them."""

    key: str
    files: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None  # a REASONS code
    detail: str = ""


class _EndAwareInfo(tarfile.TarInfo):
    """Records on its archive whether the end-of-archive marker (a zero block) was read.

    tarfile stops silently when a stream ends at a block boundary or inside a header, so
    a shard cut off there would look complete; the missing marker gives it away.
    """

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(archive)
        except tarfile.EOFHeaderError:
            archive.clean_end = True  # type: ignore[attr-defined]
            raise


def unsafe_name(name: str) -> str | None:
    """Why a member name could escape a target folder, or None if it cannot."""
    if "\0" in name or "\\" in name:
        return "contains a NUL or backslash"
    path = PurePosixPath(name)
    if path.is_absolute():
        return "is absolute"
    if ".." in path.parts:
        return "contains '..'"
    return None


def split_member(name: str) -> tuple[str, str]:
    """(key, extension) of a member: `dir/000123.json` -> ("dir/000123", "json")."""
    head, _, base = name.removeprefix("./").rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def iter_tar(stream: IO[bytes], max_member_bytes: int) -> Iterator[TarSample]:
    """Samples of a tar stream (plain or compressed), in member order."""
    current: TarSample | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_EndAwareInfo) as tar:
            for member in tar:
                if member.isdir():
                    continue
                why = unsafe_name(member.name)
                if why is None and not member.isreg():
                    why = "is a link or special file, not a regular file"
                if why is not None:
                    detail = f"{member.name!r} {why}"
                    yield TarSample(member.name, error="unsafe_member", detail=detail)
                    continue
                key, ext = split_member(member.name)
                if current is None or key != current.key:
                    if current is not None:
                        yield current
                    current = TarSample(key)
                if current.error:
                    continue
                if member.size > max_member_bytes:
                    current.error, current.detail = (
                        "file_too_large",
                        f"member {member.name!r}: {member.size} bytes > {max_member_bytes}",
                    )
                    continue
                reader = tar.extractfile(member)
                data = reader.read() if reader is not None else b""
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name!r} is truncated")
                current.files[ext] = data
            if not getattr(tar, "clean_end", False):
                raise tarfile.ReadError("the shard ends without its end-of-archive marker")
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        # The shard breaks off. Samples before the current one are complete; the current
        # one may have lost members, so it is reported (with everything after it) as one
        # unreadable entry under its key.
        yield TarSample(
            current.key if current is not None else "@start",
            error="unreadable_file",
            detail=f"corrupt tar {'at this sample' if current else 'at its start'} ({e})",
        )
        return
    if current is not None:
        yield current
