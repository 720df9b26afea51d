"""Tar members as bytes, byte-identical to `tarfile`'s PAX-format output, without its cost.

`tarfile.TarFile.addfile` builds every header in Python through a dict and a PAX check
(~0.3 ms a member): at curation rates that was a third of the driver's per-record work.
A shard member here always has the same mode, owner and mtime, so its ustar header is a
constant template with only the name, the size and the checksum filled in. Names that
need a PAX extended header (non-ASCII, over 100 bytes) and sizes of 8 GiB or more go
through `tarfile` itself, so the output stays what `tarfile` would have written.
tests/test_tarmember.py checks the identity against `tarfile` byte for byte.
"""

from __future__ import annotations

import tarfile

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 20 blocks: tarfile pads a closed archive to a multiple
MODE = 0o644
_NAME_LEN = 100  # ustar name field; longer names get a PAX header
_MAX_SIZE = 8**11  # the 12-byte octal size field's limit


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _template() -> bytes:
    """The header of an empty-named, empty member with the checksum field blanked."""
    head = bytearray(_info("", 0).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    assert len(head) == BLOCK, "a plain member needs no PAX header"
    head[148:156] = b" " * 8  # the checksum is summed with its own field as spaces
    return bytes(head)


_TEMPLATE = _template()


def header(name: str, size: int) -> bytes:
    """The header block(s) `tarfile` (PAX format, the constants above) writes for a member."""
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        raw = b""
    if not raw or len(raw) > _NAME_LEN or size >= _MAX_SIZE:
        return _info(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    head = bytearray(_TEMPLATE)
    head[: len(raw)] = raw
    head[124:136] = b"%011o\0" % size
    head[148:156] = b"%06o\0 " % sum(head)
    return bytes(head)


def member(name: str, data: bytes) -> list[bytes]:
    """[header, data, padding]: one member as `tarfile.addfile` lays it out."""
    pad = -len(data) % BLOCK
    return [header(name, len(data)), data, b"\0" * pad]


def end_of_archive(offset: int) -> bytes:
    """What `TarFile.close` appends to an archive `offset` bytes long: two zero blocks,
    then zeros up to a whole record."""
    end = offset + 2 * BLOCK
    return b"\0" * (2 * BLOCK + (-end % RECORD))
