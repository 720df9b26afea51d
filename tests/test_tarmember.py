"""Shards written by ShardWriter are byte-identical to what tarfile writes for them."""

from __future__ import annotations

import io
import tarfile

import pytest

from tipsv2_core.data import tarmember
from tipsv2_core.data.tarshards import ShardWriter


def _tarfile_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """The archive as the previous writer made it: tarfile, PAX format, constant fields."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


NAMES = [
    "a.jpg",
    "k" * 95 + ".json",  # exactly 100 bytes: still a plain ustar name
    "k" * 96 + ".json",  # 101: tarfile adds a PAX header
    "caf\u00e9-1.png",  # non-ASCII: PAX header
    "x-000001.mask.png",
]
SIZES = [0, 1, 511, 512, 513, 70_001]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", SIZES)
def test_member_matches_tarfile(name: str, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    archive = _tarfile_bytes([(name, data)])
    ours = b"".join(tarmember.member(name, data))
    assert archive.startswith(ours)
    assert ours + tarmember.end_of_archive(len(ours)) == archive


def test_shard_writer_output_is_tarfiles(tmp_path) -> None:
    samples = [
        (f"s-{i:03d}", {"jpg": b"\xff" * (i * 37), "json": b'{"i":%d}' % i}) for i in range(30)
    ]
    with ShardWriter(tmp_path, "train", max_samples_per_shard=7) as w:
        for key, files in samples:
            w.write(key, files)
    shards = sorted(tmp_path.glob("train-*.tar"))
    assert len(shards) == 5
    for n, shard in enumerate(shards):
        chunk = samples[n * 7 : (n + 1) * 7]
        expected = [(f"{k}.{e}", d) for k, files in chunk for e, d in files.items()]
        assert shard.read_bytes() == _tarfile_bytes(expected)
