"""Tar shards and dataset directories: round trip, determinism, atomicity, safe reading."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tipsv2_core.data import synth_dataset
from tipsv2_core.data.hashing import hamming, phash, sha256_hex
from tipsv2_core.data.shards import (
    DatasetError,
    ShardWriter,
    encode_sample,
    iter_samples,
    list_shards,
    local_path,
    open_dataset,
    read_shard,
)
from tipsv2_core.data.synth_dataset import assign_split, write_synthetic_dataset
from tipsv2_core.data.synthetic import generate_scene
from tipsv2_core.data.worlds import DEFAULT_WORLD, get_world

pytestmark = pytest.mark.unit
N, SEED = 60, 1


def write(out: Path, **kw) -> Path:
    args = {"num_images": N, "image_size": 112, "seed": SEED, "shard_size": 10}
    return write_synthetic_dataset(out, **{**args, **kw}, progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("data") / "synth")


@pytest.fixture
def copy(dataset, tmp_path) -> Path:
    """A private copy of the dataset that a test may damage."""
    return Path(shutil.copytree(dataset, tmp_path / "copy"))


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def test_write_read_round_trip_is_exact(dataset):
    info = open_dataset(dataset)
    rows = {r["key"]: r for r in info.manifest.to_pylist()}
    samples = list(iter_samples(dataset))
    assert len(samples) == len(rows) == len(info) == N
    assert {s.key for s in samples} == set(rows)
    for s in samples[:: N // 12]:
        scene = generate_scene(SEED, int(s.key.split("-")[1]), 112)
        np.testing.assert_array_equal(np.asarray(s.image), scene.image)
        np.testing.assert_array_equal(s.mask, scene.label)
        assert s.image.mode == "RGB"
        assert {k: s.meta[k] for k in scene.captions} == scene.captions
        assert s.meta["classes"] == scene.classes
        assert s.meta["phash"] == phash(s.image) and re.fullmatch(r"[0-9a-f]{16}", s.meta["phash"])
        row = rows[s.key]
        assert row["shard"] == s.shard.removeprefix(f"{dataset}/")
        for k in ("alt_text", "caption_medium", "caption_long", "split", "sha256", "classes"):
            assert row[k] == s.meta[k]
    # sha256 is of the stored image bytes.
    shard = dataset / info.shards("train")[0]
    members = tar_members(shard)
    key = next(n for n in members if n.endswith(".png") and not n.endswith(".mask.png"))[:-4]
    assert json.loads(members[f"{key}.json"])["sha256"] == sha256_hex(members[f"{key}.png"])
    with tarfile.open(shard) as tar:
        assert all(m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in tar.getmembers())


def test_directory_layout_and_card(dataset):
    names = sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*"))
    shards = [n for n in names if n.startswith("shards/") and n != "shards"]
    assert all(re.fullmatch(r"shards/(train|val|test)-\d{6}\.tar", n) for n in shards)
    assert set(names) - set(shards) == {
        "COMPLETE", "dataset_card.json", "manifest.parquet", "rejected.parquet", "shards",
    }  # fmt: skip
    assert not [p for p in dataset.parent.iterdir() if p.name.startswith(".")]  # no temp dirs
    info = open_dataset(dataset)
    card = info.card
    assert card["class_names"] == list(get_world(DEFAULT_WORLD).class_names)
    assert card["generator"]["world"] == DEFAULT_WORLD
    assert card["generator"]["seed"] == SEED and card["generator"]["image_size"] == 112
    assert sum(card["counts"].values()) == N == card["num_samples"]
    assert card["rejects"] == {} and pq.read_table(dataset / "rejected.parquet").num_rows == 0
    assert card["image_sizes"] == {"112x112": N}
    for hist in card["caption_words"].values():
        assert sum(hist["bins"].values()) == N
    assert card["caption_words"]["alt_text"]["mean"] < card["caption_words"]["caption_long"]["mean"]
    instances = sum(len(s.meta["objects"]) for s in iter_samples(dataset))
    assert sum(card["class_instance_counts"].values()) == instances
    assert sum(card["class_pixel_counts"].values()) + card["ignore_pixel_count"] == N * 112 * 112
    assert sorted(set(info.shards())) == sorted(shards)


def test_shards_divide_among_workers(dataset):
    train = list_shards(dataset, "train")
    assert len(train) >= 5 and train == sorted(train)
    every = list_shards(dataset)
    assert set(train) < set(every)
    halves = [train[0::2], train[1::2]]  # two workers
    keys = [[s.key for s in iter_samples(dataset, shards=h)] for h in halves]
    assert not set(keys[0]) & set(keys[1])
    assert sorted(keys[0] + keys[1]) == sorted(s.key for s in iter_samples(dataset, "train"))
    assert {s.meta["split"] for s in iter_samples(dataset, "val")} == {"val"}
    with pytest.raises(DatasetError, match="no split 'validation'"):
        list_shards(dataset, "validation")
    with pytest.raises(DatasetError, match="not a shard"):
        next(iter_samples(dataset, shards=["shards/nope-000000.tar"]))


def test_rerun_is_byte_identical_whatever_the_workers(dataset, tmp_path):
    again = write(tmp_path / "again", workers=2)
    a, b = files_of(dataset), files_of(again)
    card_a, card_b = json.loads(a.pop("dataset_card.json")), json.loads(b.pop("dataset_card.json"))
    assert a == b
    assert card_a.pop("name") == "synth" and card_b.pop("name") == "again"
    assert card_a == card_b  # no time stamp: a rerun has the same DVC hash
    other = write(tmp_path / "other", seed=SEED + 1)
    assert (other / "manifest.parquet").read_bytes() != a["manifest.parquet"]


def test_splits_follow_the_ratios(tmp_path):
    ratios = {"train": 0.9, "val": 0.05, "test": 0.05}
    got = [assign_split(f"s0-{i:08d}", ratios) for i in range(20000)]
    for name, r in ratios.items():
        assert got.count(name) / len(got) == pytest.approx(r, abs=0.01)
    path = write(tmp_path / "half", num_images=20, splits=(0.5, 0.5, 0.0))
    assert set(open_dataset(path).counts) == {"train", "val"}
    with pytest.raises(ValueError, match="sum to 1"):
        write(tmp_path / "bad", splits=(0.5, 0.2, 0.2))


def test_a_failed_run_leaves_the_previous_dataset_intact(copy, monkeypatch):
    before = files_of(copy)
    real = synth_dataset.generate_scene

    def failing(seed, index, size, world):
        if index == 7:
            raise RuntimeError("generator crashed")
        return real(seed, index, size, world)

    monkeypatch.setattr(synth_dataset, "generate_scene", failing)
    with pytest.raises(RuntimeError, match="crashed"):
        write(copy, seed=SEED + 5)
    assert files_of(copy) == before
    assert [p.name for p in copy.parent.iterdir()] == ["copy"]  # temp dir cleaned up
    monkeypatch.undo()
    write(copy, num_images=12)  # a complete dataset is replaced
    assert len(open_dataset(copy)) == 12


def test_refuses_to_overwrite_a_directory_that_is_not_a_dataset(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a dataset"):
        write(tmp_path / "mine", num_images=2)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_incomplete_or_inconsistent_datasets_are_refused(copy):
    (copy / "COMPLETE").unlink()
    with pytest.raises(DatasetError, match="incomplete"):
        open_dataset(copy)
    with pytest.raises(DatasetError, match="incomplete"):
        next(iter_samples(copy))
    with pytest.raises(DatasetError, match="not a dataset directory"):
        open_dataset(copy / "shards")
    with pytest.raises(DatasetError, match="no such dataset directory"):
        open_dataset(copy / "missing")
    (copy / "COMPLETE").write_text("")
    card = json.loads((copy / "dataset_card.json").read_text())
    card["num_samples"] += 1
    (copy / "dataset_card.json").write_text(json.dumps(card))
    with pytest.raises(DatasetError, match=r"manifest\.parquet.*rows"):
        open_dataset(copy)
    (copy / "dataset_card.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"dataset_card\.json: unreadable"):
        open_dataset(copy)


def test_a_truncated_shard_is_an_error_naming_it(copy):
    shard = copy / list_shards(copy, "train")[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])  # cut inside a member
    with pytest.raises(DatasetError, match=re.escape(str(shard))):
        list(iter_samples(copy, "train"))
    with pytest.warns(UserWarning, match=re.escape(shard.name)):
        kept = list(iter_samples(copy, "train", on_error="skip"))
    assert 0 < len(kept) < open_dataset(copy).counts["train"]


def test_a_shard_cut_between_members_is_caught_by_the_manifest(copy):
    shard = copy / list_shards(copy, "train")[0]
    with tarfile.open(shard) as tar:
        cut = tar.getmembers()[9].offset  # a member header boundary: tar sees a clean end
    shard.write_bytes(shard.read_bytes()[:cut])
    with pytest.raises(DatasetError, match=re.escape(shard.name) + ".*missing"):
        list(iter_samples(copy, shards=[shard.relative_to(copy).as_posix()]))


def test_member_names_that_leave_the_directory_are_rejected(tmp_path):
    for bad in ("../evil.png", "sub/a.png", "..hidden.json"):
        path = tmp_path / "bad.tar"
        with tarfile.open(path, "w") as tar:
            info = tarfile.TarInfo(bad)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
        with pytest.raises(DatasetError, match="unsafe member name"):
            list(read_shard(path, on_error="skip"))
    assert not (tmp_path.parent / "evil.png").exists()
    with tarfile.open(path, "w") as tar:
        link = tarfile.TarInfo("k.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(DatasetError, match="not a regular file"):
        list(read_shard(path))


def _image_sample(key: str) -> dict[str, bytes]:
    return encode_sample(key, np.full((16, 16, 3), 7, np.uint8), {"alt_text": key})[0]


def test_a_sample_missing_its_image_is_named_or_skipped(tmp_path):
    with ShardWriter(tmp_path, "x", max_samples_per_shard=10) as w:
        w.write("good1", _image_sample("good1"))
        files = _image_sample("broken")
        w.write("broken", {"json": files["json"]})
        w.write("good2", _image_sample("good2"))
    shard = w.shards[0]
    with pytest.raises(DatasetError, match=rf"{re.escape(str(shard))}: sample 'broken': no image"):
        list(read_shard(shard))
    with pytest.warns(UserWarning, match="broken"):
        keys = [s.key for s in read_shard(shard, on_error="skip")]
    assert keys == ["good1", "good2"]


def test_shard_writer_rolls_over_and_renames_only_complete_shards(tmp_path):
    w = ShardWriter(tmp_path, "train", max_samples_per_shard=3, max_bytes=1 << 20)
    for i in range(4):
        w.write(f"k{i}", _image_sample(f"k{i}"))
    assert [p.name for p in w.shards] == ["train-000000.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".train-000001.tar.partial",
        "train-000000.tar",
    ]
    w.close()
    assert [len(list(read_shard(p))) for p in w.shards] == [3, 1]
    small = ShardWriter(tmp_path / "b", "s", max_samples_per_shard=100, max_bytes=4000)
    with small:
        for i in range(5):
            small.write(f"k{i}", _image_sample(f"k{i}"))
    assert len(small.shards) > 1 and all(p.stat().st_size <= 4000 + 1024 * 10 for p in small.shards)
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "c", "s") as failing:
        failing.write("k", _image_sample("k"))
        raise RuntimeError
    assert list((tmp_path / "c").iterdir()) == []
    with pytest.raises(DatasetError, match="invalid sample key"):
        ShardWriter(tmp_path / "d", "s").write("a.b", {})
    with pytest.raises(DatasetError, match="invalid member extensions"):
        ShardWriter(tmp_path / "d", "s").write("a", {"../x.png": b""})


def test_local_paths_and_uris(tmp_path):
    assert local_path(str(tmp_path)) == tmp_path
    assert local_path(tmp_path.as_uri()) == tmp_path
    assert local_path("file://localhost/data/x%20y") == Path("/data/x y")
    with pytest.raises(DatasetError, match="components layer"):
        local_path("s3://bucket/prefix")
    with pytest.raises(DatasetError, match="local path"):
        local_path("file://otherhost/data")


def test_phash_finds_near_duplicates():
    a = Image.fromarray(generate_scene(0, 1, 224).image)
    b = Image.fromarray(generate_scene(0, 2, 224).image)
    assert hamming(phash(a), phash(a.resize((112, 112), Image.BILINEAR))) <= 4
    jpeg = io.BytesIO()
    a.save(jpeg, format="JPEG", quality=70)
    assert hamming(phash(a), phash(Image.open(jpeg))) <= 4
    assert hamming(phash(a), phash(b)) > 12
