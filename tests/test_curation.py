"""Curation: every cleaning rule on crafted bad inputs, and whole runs on mixed sources.

Unit tests call the pure rules (tipsv2_core.data.curation) and `curate(..., workers=0)`
(no Ray). The integration tests share one module-scoped local Ray (2 CPUs): a mixed
folder + tar shards + CSV + COCO run checked against its expected counts and rejects and
read back by the shard reader and the trainer's dataset, the same run without Ray giving
byte-identical shards, and an S3 source and output through the local S3 gateway.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import struct
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from components.curate import CurateConfig, CurateConfigError, curate, load_config
from components.curate.plan import labels, plan_sources
from components.storage import Storage
from tipsv2_core.data.curation.captioners import AltTextCaptioner, RuleCaptioner, fill_captions
from tipsv2_core.data.curation.captions import clean_captions, decode_text, first_line, normalise
from tipsv2_core.data.curation.config import CaptionRules, ImageRules
from tipsv2_core.data.curation.dedup import Deduplicator, NearDuplicateIndex
from tipsv2_core.data.curation.images import clean_image, content_hash
from tipsv2_core.data.curation.process import process_record
from tipsv2_core.data.curation.records import REASONS, RawRecord, Reject, Rejected, make_key
from tipsv2_core.data.curation.tarsamples import iter_tar
from tipsv2_core.data.hashing import phash
from tipsv2_core.data.layout import DatasetError
from tipsv2_core.data.shards import iter_samples, open_dataset
from tipsv2_core.data.synth_dataset import assign_split
from tipsv2_core.data.tarshards import KEY_RE

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray Data's own context copies touch its deprecated options; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


# ------------------------------------------------------------------------ image makers


def photo(seed: int, w: int = 160, h: int = 120) -> Image.Image:
    """A picture with structure at several scales: a smooth field plus a few blocks."""
    rng = np.random.default_rng(seed)
    field = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(field).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = int(rng.integers(0, max(w - 20, 1))), int(rng.integers(0, max(h - 20, 1)))
        box = [x, y, x + int(rng.integers(1, w // 2 + 2)), y + int(rng.integers(1, h // 2 + 2))]
        draw.rectangle(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with no real pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


RULES = ImageRules()


def reason_of(data: bytes, rules: ImageRules = RULES) -> str:
    with pytest.raises(Reject) as info:
        clean_image(data, rules)
    return info.value.reason


# ------------------------------------------------------------------------- image rules


@pytest.mark.unit
def test_broken_files_are_rejected_with_their_reason():
    good = encode(photo(0))
    assert reason_of(b"") == "empty_file"
    assert reason_of(good[: len(good) // 2]) == "truncated"
    png = bytearray(encode(photo(0), "PNG"))
    png[200:260] = bytes(60)  # zeros inside the compressed pixel data
    assert reason_of(bytes(png)) == "undecodable"
    assert reason_of(b"GIF89a but not really" + bytes(100)) == "not_an_image"
    assert reason_of(b"plain text, no image at all") == "not_an_image"
    assert reason_of(encode(photo(0), "PNG"), ImageRules(formats=("JPEG",))) == "not_an_image"
    assert reason_of(good, ImageRules(max_file_bytes=100)) == "file_too_large"


@pytest.mark.unit
def test_size_and_aspect_filters():
    assert reason_of(encode(photo(0, 40, 20))) == "too_small"
    assert reason_of(encode(photo(0, 160, 120)), ImageRules(max_side=150)) == "too_large"
    assert reason_of(encode(photo(0, 400, 40)), ImageRules(min_side=16)) == "bad_aspect_ratio"
    assert clean_image(encode(photo(0, 400, 40)), ImageRules(min_side=16, max_aspect_ratio=10))


@pytest.mark.unit
def test_decompression_bomb_is_refused_from_the_header():
    # 100000 x 100000 claimed by a 60-byte file: refused before any pixel is decoded.
    assert reason_of(png_header_only(100_000, 100_000)) == "decompression_bomb"
    assert reason_of(png_header_only(20_000, 10_000)) == "decompression_bomb"  # > 89.5 MP
    small_limit = ImageRules(max_pixels=100 * 100)
    assert reason_of(encode(photo(0, 160, 120)), small_limit) == "decompression_bomb"


@pytest.mark.unit
def test_png_with_a_jpg_name_is_recognised_by_content(tmp_path):
    img = photo(1)
    src = tmp_path / "src"
    src.mkdir()
    (src / "mislabelled.jpg").write_bytes(encode(img, "PNG"))
    (src / "mislabelled.txt").write_text("a png that calls itself jpg")
    result = curate([str(src)], str(tmp_path / "out"), workers=0, progress=False)
    assert result.num_samples == 1
    (sample,) = iter_samples(tmp_path / "out")
    assert sample.meta["source_format"] == "PNG" and sample.meta["cleaning"] == []
    assert np.abs(np.asarray(sample.image, np.int16) - np.asarray(img, np.int16)).mean() < 3


@pytest.mark.unit
def test_palette_with_transparency_is_composited_on_the_background():
    pal = Image.new("P", (64, 64), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    ImageDraw.Draw(pal).rectangle([32, 0, 63, 63], fill=1)  # right half: red, index 1
    data = encode(pal, "PNG", transparency=0)  # index 0 (left half) is transparent
    out = clean_image(data, ImageRules(background=(0, 255, 0), store_format="png"))
    px = np.asarray(out.image)
    assert out.image.mode == "RGB" and tuple(px[10, 10]) == (0, 255, 0)
    assert tuple(px[10, 50]) == (255, 0, 0)
    assert any("alpha_on_background" in s for s in out.steps)


@pytest.mark.unit
def test_la_and_rgba_are_composited():
    la = Image.new("LA", (64, 64), (200, 0))
    ImageDraw.Draw(la).rectangle([0, 0, 31, 63], fill=(50, 255))
    out = clean_image(encode(la, "PNG"), ImageRules(background=(10, 20, 30), store_format="png"))
    px = np.asarray(out.image)
    assert tuple(px[5, 5]) == (50, 50, 50) and tuple(px[5, 50]) == (10, 20, 30)
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 128))
    px = np.asarray(clean_image(encode(rgba, "PNG"), ImageRules(store_format="png")).image)
    assert abs(int(px[0, 0, 1]) - 127) <= 1 and px[0, 0, 0] == 255  # half red on white


@pytest.mark.unit
def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # no cyan, full magenta+yellow: red
    out = clean_image(encode(cmyk, "JPEG", quality=95), RULES)
    r, g, b = np.asarray(out.image)[32, 32].astype(int)
    assert out.image.mode == "RGB" and r > 230 and g < 30 and b < 30
    assert out.data[:2] == b"\xff\xd8" and Image.open(io.BytesIO(out.data)).mode == "RGB"


@pytest.mark.unit
def test_16_bit_grey_is_scaled_not_clipped():
    values = np.zeros((64, 64), np.uint16)
    values[:, :32] = 65535
    values[:, 32:48] = 32896  # 128 * 257
    img = Image.fromarray(values)
    assert img.mode.startswith("I;16")
    px = np.asarray(clean_image(encode(img, "PNG"), ImageRules(store_format="png")).image)
    assert tuple(px[0, 0]) == (255, 255, 255) and tuple(px[0, 40]) == (128, 128, 128)
    assert tuple(px[0, 60]) == (0, 0, 0)


@pytest.mark.unit
def test_exif_orientation_is_applied():
    img = Image.new("RGB", (90, 60), (0, 0, 255))
    ImageDraw.Draw(img).rectangle([0, 0, 44, 59], fill=(255, 0, 0))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    out = clean_image(encode(img, "JPEG", quality=95, exif=exif.tobytes()), RULES)
    assert out.image.size == (60, 90)
    px = np.asarray(out.image).astype(int)
    assert px[10, 30, 0] > 200 and px[80, 30, 2] > 200  # red on top, blue at the bottom
    assert out.steps == ["exif_orientation_6"]
    stored = Image.open(io.BytesIO(out.data))
    assert stored.size == (60, 90) and stored.getexif().get(0x0112, 1) == 1


@pytest.mark.unit
def test_resize_and_keeping_source_bytes():
    data = encode(photo(2, 400, 300), quality=90)
    same = clean_image(data, RULES)
    assert same.data == data and same.steps == []  # nothing to fix: stored bit for bit
    small = clean_image(data, ImageRules(resize_max_side=100))
    assert small.image.size == (100, 75) and small.data != data
    assert small.steps == ["draft_decode"]  # JPEG DCT scaling hit 1/4 exactly
    odd = clean_image(data, ImageRules(resize_max_side=130))
    assert odd.image.size == (130, 98) and odd.steps == ["draft_decode", "resize_200x150_to_130x98"]
    png = clean_image(encode(photo(2, 400, 300), "PNG"), ImageRules(resize_max_side=100))
    assert png.image.size == (100, 75) and png.steps == ["resize_400x300_to_100x75"]
    assert clean_image(data, ImageRules(store_format="png")).data[:4] == b"\x89PNG"


# ----------------------------------------------------------------------- caption rules


@pytest.mark.unit
def test_caption_normalisation():
    assert normalise("  Caf\u0065\u0301 &amp; cr\u00e8me\t\n br\u00fbl\u00e9e  ") == (
        "Caf\u00e9 & cr\u00e8me br\u00fbl\u00e9e"
    )
    assert normalise("a\x00b\u200bc\u202ed\x7f  e") == "a b c d e"
    assert normalise("&amp;lt;tag&amp;gt;") == "&lt;tag&gt;"  # entities resolved once only
    assert first_line("\n  \n\u200b\nthe alt text\nmore") == "the alt text"


@pytest.mark.unit
def test_caption_decoding_and_bounds():
    rules = CaptionRules()
    latin1 = "café au lait".encode("latin-1")
    with pytest.raises(Reject, match="caption_not_text"):
        decode_text(latin1, rules)
    assert decode_text(latin1, CaptionRules(undecodable="replace")) == "caf\ufffd au lait"
    assert decode_text("héllo".encode("utf-16"), rules) == "héllo"
    assert decode_text(b"\xef\xbb\xbfbom", rules) == "bom"
    assert clean_captions({"alt_text": "   ", "caption_long": "x y"}, rules) == {
        "caption_long": "x y"
    }
    cut = clean_captions({"alt_text": "one two three four"}, CaptionRules(max_chars=10))
    assert cut == {"alt_text": "one two"}
    with pytest.raises(Reject, match="caption_too_long"):
        clean_captions({"alt_text": "x" * 20}, CaptionRules(max_chars=10, too_long="reject"))
    short = clean_captions({"alt_text": "hi"}, CaptionRules(min_chars=3))
    assert short == {}


def record(key: str, img: bytes | None, **files: bytes) -> RawRecord:
    rec = RawRecord(key, "t", f"/x/{key}.jpg", files=dict(files))
    if img is not None:
        rec.files["image"], rec.image_ext = img, "image"
    return rec


@pytest.mark.unit
def test_bad_captions_reject_the_record_not_the_run():
    cfg, cap = CurateConfig(), AltTextCaptioner()
    img = encode(photo(3))
    cases = {
        "latin1": ({"txt": "crème".encode("latin-1")}, "caption_not_text"),
        "empty": ({"txt": b"\n  \n"}, "empty_caption"),
        "none": ({}, "empty_caption"),
        "badjson": ({"json": b"{not json"}, "bad_row"),
        "listjson": ({"json": b"[1, 2]"}, "bad_row"),
    }
    for key, (files, reason) in cases.items():
        out = process_record(record(key, img, **files), cfg, cap)
        assert isinstance(out, Rejected) and out.reason == reason, (key, out)


@pytest.mark.unit
def test_captions_from_sidecars_and_the_captioner_with_sources():
    img = encode(photo(4))
    side = json.dumps({"caption_medium": "a medium caption", "classes": ["cat", "dog"]}).encode()
    rec = record("k", img, txt=b"\nalt &amp; text\nsecond", json=side)
    out = process_record(rec, CurateConfig(), AltTextCaptioner())
    assert out.meta["alt_text"] == "alt & text" and out.meta["caption_long"] == "alt & text"
    assert out.meta["caption_sources"] == {
        "alt_text": "source",
        "caption_medium": "source",
        "caption_long": "alt_text",
    }
    assert out.meta["classes"] == ["cat", "dog"] and KEY_RE.fullmatch(out.key)
    ruled = process_record(record("k", img, txt=b"x"), CurateConfig(), RuleCaptioner())
    assert ruled.meta["caption_sources"]["caption_long"] == "rules"
    assert "background" in ruled.meta["caption_medium"]


class ShoutingCaptioner:
    """A plug-in captioner, as a VLM would be: loaded from the config by import path."""

    name = "shout"

    def __init__(self, suffix: str = "!") -> None:
        self.suffix = suffix

    def caption(self, image, captions, missing):
        if "fail" in captions["alt_text"]:
            raise RuntimeError("model crashed")
        return {f: captions["alt_text"].upper() + self.suffix for f in missing}


@pytest.mark.unit
def test_plugin_captioner_by_import_path(tmp_path):
    cfg = CurateConfig.from_dict(
        {"captioner": {"name": "tests.test_curation:ShoutingCaptioner", "options": {"suffix": "?"}}}
    )
    from tipsv2_core.data.curation.captioners import load_captioner

    cap = load_captioner(cfg.captioner.name, cfg.captioner.options)
    img = encode(photo(5))
    out = process_record(record("a", img, txt=b"hello"), cfg, cap)
    assert (
        out.meta["caption_long"] == "HELLO?"
        and out.meta["caption_sources"]["caption_long"] == "shout"
    )
    failed = process_record(record("b", img, txt=b"fail"), cfg, cap)
    assert failed.reason == "captioner_failed"
    with pytest.raises(ValueError, match="cannot be imported"):
        load_captioner("tests.nowhere:Nothing")
    captions, sources = fill_captions(photo(5), {"alt_text": "x"}, RuleCaptioner())
    assert set(captions) == {"alt_text", "caption_medium", "caption_long"}
    assert sources["caption_medium"] == "rules"


# ------------------------------------------------------------------------------- dedup


@pytest.mark.unit
def test_near_duplicates_reencoded_or_resized_are_found():
    img = photo(7)
    variants = [
        encode(img, quality=95),
        encode(img, quality=40),
        encode(img.resize((150, 112), Image.Resampling.BILINEAR), quality=85),
        encode(img.resize((200, 150), Image.Resampling.LANCZOS), quality=90),
    ]
    others = [encode(photo(s)) for s in range(20, 30)]
    dedup = Deduplicator(max_hamming=6)
    verdicts = []
    for i, data in enumerate(variants + others):
        clean = clean_image(data, RULES)
        verdicts.append(dedup.check(f"k{i}", clean.content_hash, phash(clean.image)))
    assert verdicts[0] is None and all(v is None for v in verdicts[4:])
    assert [v[0] for v in verdicts[1:4]] == ["near_duplicate"] * 3
    assert "from k0" in verdicts[1][1]


@pytest.mark.unit
def test_exact_duplicates_share_pixels_across_containers():
    img = photo(8)
    a = clean_image(encode(img, "PNG"), ImageRules(store_format="png"))
    b = clean_image(encode(img, "BMP"), ImageRules(store_format="png"))
    assert a.content_hash == b.content_hash == content_hash(img)
    dedup = Deduplicator(near=False)
    assert dedup.check("a", a.content_hash, "0" * 16) is None
    assert dedup.check("b", b.content_hash, "f" * 16) == ("exact_duplicate", "same pixels as a")


@pytest.mark.unit
@pytest.mark.parametrize("t", [0, 3, 6, 12])
def test_band_index_finds_exactly_what_brute_force_finds(t):
    rng = np.random.default_rng(t)
    base = [int(v) for v in rng.integers(0, 2**63, 300, dtype=np.int64)]
    # near copies: flip 0..2t bits of some hashes, so both sides of the threshold occur
    queries = []
    for v in base[:100]:
        flips = rng.choice(64, size=int(rng.integers(0, 2 * t + 2)), replace=False)
        queries.append(v ^ sum(1 << int(b) for b in flips))
    index = NearDuplicateIndex(t)
    for i, v in enumerate(base):
        index.add(v, str(i))
    for q in queries + [int(v) for v in rng.integers(0, 2**63, 50, dtype=np.int64)]:
        brute = min(((v ^ q).bit_count(), i) for i, v in enumerate(base))
        hit = index.find(q)
        if brute[0] <= t:
            assert hit is not None and hit[1] == brute[0]
        else:
            assert hit is None


# --------------------------------------------------------------------- tar safety, keys


def tar_bytes(members: list[tuple[str, bytes]], links: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return buf.getvalue()


@pytest.mark.unit
def test_tar_members_that_leave_the_target_are_never_written(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "shards").mkdir(parents=True)
    img = encode(photo(9))
    members = [
        ("000001.jpg", img),
        ("000001.txt", b"a good sample"),
        ("../x.jpg", encode(photo(10))),
        ("../x.txt", b"escapes the folder"),
        ("/abs.txt", b"absolute"),
    ]
    (work / "shards" / "00000.tar").write_bytes(tar_bytes(members, links=("link.jpg",)))
    monkeypatch.chdir(work / "shards")  # even relative to the shard's folder: nothing lands
    result = curate([str(work / "shards")], str(work / "out"), workers=0, progress=False)
    assert result.num_samples == 1
    assert result.rejects == {"unsafe_member": 4}
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert not any(Path(p).name in ("x.jpg", "x.txt", "abs.txt", "link.jpg") for p in written)
    assert not Path("/abs.txt").exists()
    rejected = pq.read_table(work / "out" / "rejected.parquet").to_pylist()
    assert {r["detail"].split(" ")[0] for r in rejected} == {
        "'../x.jpg'",
        "'../x.txt'",
        "'/abs.txt'",
        "'link.jpg'",
    }


@pytest.mark.unit
def test_truncated_tar_keeps_the_samples_before_the_break():
    data = tar_bytes([(f"{i:06d}.{e}", b"x" * 700) for i in range(3) for e in ("jpg", "txt")])
    # Each member takes 512 + 1024 bytes: cut inside the header of the 5th member.
    samples = list(iter_tar(io.BytesIO(data[: 4 * 1536 + 100]), 1 << 20))
    assert [s.key for s in samples] == ["000000", "000001"]
    assert samples[0].error is None and set(samples[0].files) == {"jpg", "txt"}
    # The sample being read when the shard broke may have lost members: reported, not kept.
    assert samples[1].error == "unreadable_file" and "corrupt tar" in samples[1].detail


@pytest.mark.unit
def test_keys_are_valid_stable_and_distinct():
    assert make_key("web", "a/b-1") != make_key("web", "a_b-1")
    for rec in ("photo 1.jpg", "ünïcode/ø", "x" * 500, "../etc/passwd", "plain-name_1"):
        assert KEY_RE.fullmatch(make_key("src", rec)), rec
    assert make_key("web", "img_001") == "web-img_001"
    assert labels(["/a/images", "/b/images/", "s3://b/x/coco.json"]) == [
        "images",
        "images-2",
        "coco",
    ]


@pytest.mark.unit
def test_ray_blocks_keep_the_task_order():
    from components.curate.execute import _blocks
    from tipsv2_core.data.curation.tasks import Task, tasks_from_table

    kinds = ["file"] * 9 + ["tar"] + ["row"] * 3 + ["tar", "tar"] + ["file"] * 20
    tasks = [Task(k, "s", str(i), str(i)) for i, k in enumerate(kinds)]
    blocks = _blocks(tasks, workers=2)
    assert [t.record for b in blocks for t in tasks_from_table(b)] == [str(i) for i in range(35)]
    assert all(b.num_rows == 1 for b in blocks if b.column("kind")[0].as_py() == "tar")


# -------------------------------------------------------------------- config, sources


@pytest.mark.unit
def test_bad_config_is_a_clear_error(tmp_path):
    with pytest.raises(CurateConfigError, match="unknown config key.*images.min_sid"):
        CurateConfig.from_dict({"images": {"min_sid": 3}})
    with pytest.raises(CurateConfigError, match="images.min_side: expected int"):
        CurateConfig.from_dict({"images": {"min_side": "3"}})
    with pytest.raises(CurateConfigError, match="sum to 1"):
        CurateConfig.from_dict({"splits": {"train": 0.5}})
    with pytest.raises(CurateConfigError, match="too_long"):
        CurateConfig.from_dict({"captions": {"too_long": "explode"}})
    (tmp_path / "c.yaml").write_text("images:\n  min_side: 8\n  background: [0, 0, 0]\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.images.min_side == 8 and cfg.images.background == (0, 0, 0)
    (tmp_path / "c.json").write_text('{"dedup": {"max_hamming": 2}}')
    assert load_config(str(tmp_path / "c.json")).dedup.max_hamming == 2
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(CurateConfigError, match="invalid JSON"):
        load_config(tmp_path / "bad.json")
    assert CurateConfig.from_dict(CurateConfig().to_dict()) == CurateConfig()


@pytest.mark.unit
def test_bad_sources_fail_before_any_work(tmp_path):
    store, cfg = Storage(), CurateConfig()
    (tmp_path / "m.csv").write_text("path,text_only\nx.jpg,hello\n")
    with pytest.raises(CurateConfigError, match=r"no alt_text column .*\['path', 'text_only'\]"):
        plan_sources([str(tmp_path / "m.csv")], cfg, store)
    wrong = CurateConfig.from_dict({"columns": {"image": "img"}})
    with pytest.raises(CurateConfigError, match="no column 'img'"):
        plan_sources([str(tmp_path / "m.csv")], wrong, store)
    with pytest.raises(CurateConfigError, match="no such folder"):
        plan_sources([str(tmp_path / "missing")], cfg, store)
    with pytest.raises(CurateConfigError, match="cannot read source"):
        plan_sources([str(tmp_path / "missing.csv")], cfg, store)
    with pytest.raises(CurateConfigError, match="unsupported scheme"):
        plan_sources(["gs://bucket/x"], cfg, store)
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.jpg").write_bytes(b"x")
    (tmp_path / "mixed" / "b.tar").write_bytes(b"x")
    with pytest.raises(CurateConfigError, match="both .tar shards and image files"):
        plan_sources([str(tmp_path / "mixed")], cfg, store)
    (tmp_path / "c.json").write_text(
        '{"images": [{"id": 1, "file_name": "nope.jpg"}], "annotations": []}'
    )
    with pytest.raises(CurateConfigError, match="set coco_image_root"):
        plan_sources([str(tmp_path / "c.json")], cfg, store)
    out = tmp_path / "never"
    with pytest.raises(CurateConfigError):
        curate([str(tmp_path / "missing")], str(out), workers=0, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".never*"))


@pytest.mark.unit
def test_failed_run_leaves_the_previous_dataset_intact(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"p{i}.jpg").write_bytes(encode(photo(40 + i)))
        (src / f"p{i}.txt").write_text(f"photo {i}")
    out = tmp_path / "ds"
    first = curate([str(src)], str(out), workers=0, progress=False)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (src / "p9.jpg").write_bytes(encode(photo(49)))
    (src / "p9.txt").write_text("photo 9")
    from tipsv2_core.data.curation import writer

    calls = Counter()

    def crash(self, result):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("worker lost")
        return original(self, result)

    original = writer.CurationWriter.add
    monkeypatch.setattr(writer.CurationWriter, "add", crash)
    with pytest.raises(RuntimeError, match="worker lost"):
        curate([str(src)], str(out), workers=0, progress=False)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert len(open_dataset(out)) == first.num_samples == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    monkeypatch.undo()
    assert curate([str(src)], str(out), workers=0, progress=False).num_samples == 5


@pytest.mark.unit
def test_all_rejected_writes_nothing_but_keeps_the_rejects(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"")
    (src / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match="every one of 1 records was rejected"):
        curate([str(src)], str(tmp_path / "ds"), workers=0, progress=False)
    assert not (tmp_path / "ds").exists()
    assert pq.read_table(tmp_path / "ds.rejected.parquet").column("reason").to_pylist() == [
        "empty_file"
    ]


@pytest.mark.unit
def test_cli_prints_summary_and_a_json_line(tmp_path, capsys):
    from pipelines.cli import main

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"p{i}.jpg").write_bytes(encode(photo(60 + i)))
        (src / f"p{i}.txt").write_text(f"photo {i}")
    (src / "dup.png").write_bytes(encode(Image.open(src / "p0.jpg"), "PNG"))
    (src / "dup.txt").write_text("same pixels as p0")
    (tmp_path / "cfg.yaml").write_text("captioner: {name: rules}\n")
    out = tmp_path / "ds"
    argv = [
        "data",
        "curate",
        "--source",
        str(src),
        "--out",
        out.as_uri(),
        "--config",
        str(tmp_path / "cfg.yaml"),
        "--workers",
        "0",
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    doc = json.loads(printed[-1])
    assert doc["num_samples"] == 3 and doc["rejects"] == {"exact_duplicate": 1}
    assert doc["out"] == out.as_uri() and printed[0].startswith("curated 3 of 4 records")
    assert any("exact_duplicate" in line for line in printed)
    (tmp_path / "bad.yaml").write_text("dedup: {max_hamming: 99}\n")
    argv[argv.index(str(tmp_path / "cfg.yaml"))] = str(tmp_path / "bad.yaml")
    assert main(argv) == 2
    assert "max_hamming" in capsys.readouterr().err


# -------------------------------------------------------------------------- integration


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray with 2 CPUs for the whole module (start-up costs ~10 s here)."""
    from components.curate.execute import ray_session

    with ray_session(workers=2):
        yield


def write_jpeg(path: Path, img: Image.Image, **kw) -> Image.Image:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(img, "JPEG", **kw))
    return img


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, list[str], dict[str, int], int]:
    return build_mixed_sources(tmp_path_factory.mktemp("mixed"))


def build_mixed_sources(root: Path) -> tuple[Path, list[str], dict[str, int], int]:
    """Four sources of every kind with known bad records: (root, uris, rejects, accepted)."""
    root.mkdir(parents=True, exist_ok=True)
    seed = iter(range(100, 1000))
    # --- folder: 8 good (2 with json sidecars), plus one of each kind of bad record
    web = root / "web"
    for i in range(8):
        write_jpeg(web / f"good{i}.jpg", photo(next(seed)), quality=90)
        (web / f"good{i}.txt").write_text(f"web photo {i}\n")
    (web / "good0.json").write_text(json.dumps({"caption_medium": "a medium one"}))
    (web / "good1.json").write_text(json.dumps({"caption_long": "a long one", "classes": ["cat"]}))
    (web / "sub").mkdir()
    write_jpeg(web / "sub" / "nested.jpg", photo(next(seed)))
    (web / "sub" / "nested.txt").write_text("nested photo")
    (web / "mislabel.jpg").write_bytes(encode(photo(next(seed)), "PNG"))  # accepted
    (web / "mislabel.txt").write_text("a png named jpg")
    (web / "cmyk.jpg").write_bytes(encode(Image.new("CMYK", (64, 64), (0, 200, 200, 0))))
    (web / "cmyk.txt").write_text("a cmyk picture")
    pal = Image.new("P", (64, 64), 0)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    ImageDraw.Draw(pal).ellipse([8, 8, 56, 56], fill=1)
    (web / "palette.png").write_bytes(encode(pal, "PNG", transparency=0))
    (web / "palette.txt").write_text("a blue disc on nothing")
    good = encode(photo(next(seed)))
    (web / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (web / "truncated.txt").write_text("cut off")
    (web / "zero.jpg").write_bytes(b"")
    (web / "zero.txt").write_text("nothing")
    (web / "orphan.txt").write_text("my picture went missing")
    write_jpeg(web / "latin1.jpg", photo(next(seed)))
    (web / "latin1.txt").write_bytes("crème brûlée".encode("latin-1"))
    write_jpeg(web / "nocaption.jpg", photo(next(seed)))
    (web / "nocaption.txt").write_text("   \n\t\n")
    write_jpeg(web / "tiny.jpg", photo(next(seed), 20, 20))
    (web / "tiny.txt").write_text("too small")
    (web / "bomb.png").write_bytes(png_header_only(30_000, 30_000))
    (web / "bomb.txt").write_text("a bomb")
    first = Image.open(web / "good0.jpg").convert("RGB")
    write_jpeg(web / "requality.jpg", first, quality=40)  # near duplicate of good0
    (web / "requality.txt").write_text("good0 again, worse")
    (web / "samepixels.png").write_bytes(encode(Image.open(web / "good1.jpg"), "PNG"))
    (web / "samepixels.txt").write_text("good1 in another container")
    # --- tar shards (img2dataset style), with an escaping member and a corrupt image
    wds = root / "wds"
    wds.mkdir()
    for shard in range(2):
        members = []
        for j in range(4):
            key = f"{shard:05d}{j:04d}"
            meta = {"caption": f"tar photo {shard}-{j}", "url": f"http://x/{key}.jpg"}
            members += [
                (f"{key}.jpg", encode(photo(next(seed)))),
                (f"{key}.txt", f"tar photo {shard}-{j}".encode()),
                (f"{key}.json", json.dumps(meta).encode()),
            ]
        if shard == 0:
            members += [
                ("../evil.jpg", encode(photo(next(seed)))),
                ("../evil.txt", b"evil"),
                ("bad.jpg", b"\xff\xd8\xff\xe0 not a jpeg at all"),
                ("bad.txt", b"b"),
            ]
        (wds / f"{shard:05d}.tar").write_bytes(tar_bytes(members))
    # --- CSV manifest with relative paths, a missing file, a URL and an empty row
    tab = root / "table"
    rows = [["image", "caption", "caption_long", "classes"]]
    for i in range(5):
        write_jpeg(tab / "imgs" / f"t{i}.jpg", photo(next(seed)))
        rows.append([f"imgs/t{i}.jpg", f"table photo {i}", f"a long table caption {i}", "cat|dog"])
    rows += [
        ["imgs/gone.jpg", "missing file", "", ""],
        ["https://example.com/a.jpg", "a url", "", ""],
        ["", "no image", "", ""],
    ]
    with open(tab / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    # --- COCO captions: 3 captions per image, categories, images one folder down
    coco = root / "coco"
    images, anns = [], []
    for i in range(4):
        write_jpeg(coco / "images" / f"{i:012d}.jpg", photo(next(seed)))
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "width": 160, "height": 120})
        for c in range(3):
            anns.append({"id": 10 * i + c, "image_id": i, "caption": f"coco {i} caption {c}"})
        anns.append({"id": 1000 + i, "image_id": i, "category_id": 1 + i % 2, "bbox": [0, 0, 1, 1]})
    images.append({"id": 99, "file_name": "000000000099.jpg"})  # no file, no caption
    cats = [{"id": 1, "name": "person"}, {"id": 2, "name": "kite"}]
    doc = {"images": images, "annotations": anns, "categories": cats}
    (coco / "captions.json").write_text(json.dumps(doc))
    uris = [str(web), wds.as_uri(), str(tab / "manifest.csv"), str(coco / "captions.json")]
    rejects = {
        "truncated": 1,
        "empty_file": 1,
        "missing_image": 3,
        "caption_not_text": 1,
        "empty_caption": 1,
        "too_small": 1,
        "decompression_bomb": 1,
        "near_duplicate": 1,
        "exact_duplicate": 1,
        "unsafe_member": 2,
        "undecodable": 1,
        "unsupported_uri": 1,
        "bad_row": 1,
    }
    accepted = 8 + 1 + 1 + 1 + 1 + 8 + 5 + 4  # folder good, nested, mislabel, cmyk, palette
    return root, uris, rejects, accepted


@pytest.mark.integration
def test_mixed_sources_on_ray(mixed, ray_local, tmp_path):
    _, uris, rejects, accepted = mixed
    out = tmp_path / "curated"
    result = curate(uris, str(out), {"captioner": {"name": "rules"}}, workers=2, progress=False)
    assert result.rejects == rejects, result.summary
    assert result.num_samples == accepted
    assert result.num_rejected == sum(rejects.values())
    by_source = {s["label"]: (s["kind"], s["accepted"], s["rejected"]) for s in result.sources}
    assert by_source == {
        "web": ("folder", 12, 9),
        "wds": ("webdataset", 8, 3),
        "manifest": ("csv", 5, 3),
        "captions": ("coco", 4, 1),
    }
    assert set(REASONS) >= set(result.rejects)

    info = open_dataset(out)
    assert len(info) == accepted and sum(info.counts.values()) == accepted
    card = info.card
    assert card["rejects"] == rejects and card["num_rejected"] == sum(rejects.values())
    assert card["class_names"] == ["cat", "dog", "kite", "person"]
    assert card["class_instance_counts"] == {"cat": 6, "dog": 5, "kite": 2, "person": 2}
    assert sum(card["image_side_histogram"]["long"].values()) == accepted
    assert card["caption_sources"]["alt_text"] == {"source": accepted}
    assert card["caption_sources"]["caption_long"]["source"] == 1 + 5  # good1 + table
    assert set(card["caption_words"]) == {"alt_text", "caption_medium", "caption_long"}

    rejected = pq.read_table(out / "rejected.parquet").to_pylist()
    assert Counter(r["reason"] for r in rejected) == rejects
    where = {r["reason"]: r for r in rejected}
    assert where["near_duplicate"]["record"].endswith("requality.jpg")
    assert "web-good0" in where["near_duplicate"]["detail"]
    assert where["exact_duplicate"]["record"].endswith("samepixels.png")
    assert where["unsupported_uri"]["record"].endswith("#row=6")
    assert {r["source"] for r in rejected} == {"web", "wds", "manifest", "captions"}

    samples = list(iter_samples(out))
    assert len(samples) == accepted
    assert all(s.meta["split"] == assign_split(s.key, card["splits"]) for s in samples)
    for s in samples:
        assert s.image.mode == "RGB" and min(s.image.size) >= 32
        assert all(
            isinstance(s.meta[f], str) and s.meta[f]
            for f in ("alt_text", "caption_medium", "caption_long")
        )
    metas = {s.key: s.meta for s in samples}
    assert metas["captions-2"]["coco_captions"] == [f"coco 2 caption {c}" for c in range(3)]
    assert metas["captions-2"]["caption_medium"] == "coco 2 caption 1"
    assert metas[make_key("wds", "00000/000000001")]["url"] == "http://x/000000001.jpg"
    assert metas["web-good1"]["classes"] == ["cat"]
    assert metas["web-palette"]["cleaning"] == ["P_alpha_on_background"]
    disc = next(s for s in samples if s.key == "web-palette").image
    assert np.asarray(disc)[0, 0].tolist() == [255, 255, 255]  # transparent corner: white
    assert metas["web-cmyk"]["source_format"] == "JPEG" and metas["web-cmyk"]["cleaning"]

    # The trainer's dataset reads it: tokenised captions and views of every train sample.
    from tipsv2_core.data.train_dataset import TrainDataset
    from tipsv2_core.data.views import ViewConfig
    from tipsv2_core.text.tokenizer import train_tokenizer

    corpus = [m[f] for m in metas.values() for f in ("alt_text", "caption_medium", "caption_long")]
    tok = train_tokenizer(corpus, tmp_path / "tok.model", vocab_size=120)
    ds = TrainDataset(
        out, "train", ViewConfig(56, 28, 2), 0.5, "random", "two_cls_multi", tok, 16, seed=0
    )
    assert len(ds) == info.counts["train"]
    for i in range(len(ds)):
        item = ds[(0, 0, i)]
        assert item["global_crops"].shape == (3, 56, 56) and item["cls2_ids"].shape == (16,)


@pytest.mark.integration
def test_same_output_with_and_without_ray(mixed, ray_local, tmp_path):
    """Ray with 1 and 2 workers and the plain loop write byte-identical shards."""
    _, uris, _, _ = mixed
    outs = {}
    for workers in (0, 1, 2):
        outs[workers] = tmp_path / f"w{workers}"
        curate(uris, str(outs[workers]), workers=workers, progress=False)

    def digest(root: Path) -> dict[str, str]:
        files = sorted((root / "shards").iterdir())
        digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
        for table in ("manifest", "rejected"):
            digests[table] = str(pq.read_table(root / f"{table}.parquet").to_pylist())
        return digests

    assert digest(outs[0]) == digest(outs[1]) == digest(outs[2])


@pytest.mark.integration
def test_s3_source_and_output(mixed, s3_env, tmp_path, monkeypatch):
    from components.s3_publish import current_root
    from components.storage import default_storage

    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    root, _, _, _ = mixed
    store = default_storage()
    store.put_directory(root / "wds", "s3://tipsv2/raw/wds")
    store.put_directory(root / "table", "s3://tipsv2/raw/table")
    sources = ["s3://tipsv2/raw/wds", "s3://tipsv2/raw/table/manifest.csv"]
    out = "s3://tipsv2/curated/v1"
    versions = []
    for _ in range(2):  # the second run replaces the first
        result = curate(sources, out, workers=0, progress=False)
        assert result.num_samples == 13 and result.rejects["unsafe_member"] == 2
        versions.append(current_root(out))
    names = store.list_files(out)
    version = versions[1][len(out) + 1 :]
    assert versions[0] != versions[1]  # the first is gone: only COMPLETE and the second
    assert f"{version}/manifest.parquet" in names and f"{version}/rejected.parquet" in names
    assert all(n == "COMPLETE" or n.startswith(f"{version}/") for n in names)
    store.get_directory(versions[1], tmp_path / "back")  # a version is a complete copy
    assert len(open_dataset(tmp_path / "back")) == 13
    with pytest.raises(CurateConfigError, match="no such folder"):
        curate(["s3://tipsv2/raw/nothing-here"], out, workers=0, progress=False)


@pytest.mark.integration
@pytest.mark.slow
def test_a_killed_s3_rewrite_leaves_the_previous_dataset_and_sweep_finds_the_rest(
    s3_env, tmp_path, monkeypatch
):
    """`tipsv2 data curate --out s3://…` over an existing dataset, killed (SIGKILL) while
    it uploads: the previous dataset stays current, whole and valid; `tipsv2 data sweep`
    finds and removes exactly the killed write's version; a rewrite that finishes leaves
    nothing of the old one."""
    import signal
    import subprocess
    import sys
    import time

    from components.s3_publish import current_root

    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    tipsv2 = str(Path(sys.executable).with_name("tipsv2"))
    store = Storage(environ=s3_env)
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(7)
    for i in range(80):  # noise does not compress: ~25 MB, an upload that takes a while
        pixels = (rng.random((320, 320, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(src / f"n{i:03d}.png")
        (src / f"n{i:03d}.txt").write_text(f"noise picture number {i}")
    config = tmp_path / "curate.json"
    config.write_text(json.dumps({"shard_max_samples": 2}))  # many objects, too
    out = "s3://tipsv2/curated/killed"
    argv = [tipsv2, "data", "curate", "--source", str(src), "--out", out, "--config",
            str(config), "--workers", "0", "--no-progress"]  # fmt: skip

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tipsv2, *extra], env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip

    def validates() -> bool:
        res = run("data", "validate", "--data", out, "--out", str(tmp_path / "report"))
        return res.returncode == 0

    assert run(*argv[1:]).returncode == 0
    old = current_root(out)
    assert old is not None
    before = store.list_files(out)
    assert validates()

    pixels = (rng.random((320, 320, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(src / "n999.png")  # the rewrite has one sample more
    (src / "n999.txt").write_text("one more")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    prefix = f"{old[len(out) + 1 :]}/"
    while not [n for n in store.list_files(out) if not n.startswith((prefix, "COMPLETE"))]:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # mid-upload: no handler runs, nothing is cleaned up
    proc.wait()
    proc.stderr.close()
    assert current_root(out) == old, "the rewrite finished before it could be killed"
    left = [n for n in store.list_files(out) if n not in before]
    assert left and all(n.startswith("versions/") for n in left)
    assert [n for n in store.list_files(out) if n in before] == before  # the old one, whole
    assert validates()

    res = run("data", "sweep", out, "--min-age", "0s", "--delete")
    assert res.returncode == 0 and "removed: 1 left-over root of" in res.stdout, res.stdout
    assert store.list_files(out) == before

    assert run(*argv[1:]).returncode == 0  # a rewrite that finishes
    new = current_root(out)
    assert new != old
    version = new[len(out) + 1 :]
    assert all(n == "COMPLETE" or n.startswith(f"{version}/") for n in store.list_files(out))
    assert validates()
