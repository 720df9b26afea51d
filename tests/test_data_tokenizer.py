"""`tipsv2 data tokenizer` / components.tokenizer: a versioned tokenizer artifact."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
from pathlib import Path

import pytest

from components.tokenizer import INFO_FILE, MODEL_FILE, _normalise_model, build_tokenizer
from pipelines.cli import data as data_cli
from tipsv2_core.data.layout import DatasetError
from tipsv2_core.data.shards import open_dataset
from tipsv2_core.data.synth_dataset import write_synthetic_dataset
from tipsv2_core.text.tokenizer import Tokenizer, train_tokenizer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokdata") / "ds"
    return write_synthetic_dataset(out, num_images=60, seed=2, shard_size=25, progress=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_artifact_records_its_hash_and_dataset(dataset, tmp_path):
    art = build_tokenizer(dataset, tmp_path / "tok", vocab_size=300)
    model, info_file = tmp_path / "tok" / MODEL_FILE, tmp_path / "tok" / INFO_FILE
    info = json.loads(info_file.read_text())
    assert info == art.info
    assert info["sha256"] == sha256(model) == art.sha256
    tok = Tokenizer(model)
    assert info["vocab_size"] == tok.vocab_size == art.vocab_size <= 300
    train = open_dataset(dataset).counts["train"]
    assert info["dataset"] == {
        "uri": str(dataset),
        "name": "ds",
        "num_samples": 60,
        "manifest_sha256": sha256(dataset / "manifest.parquet"),
        "split": "train",
        "caption_fields": ["alt_text", "caption_medium", "caption_long"],
        "num_captions": 3 * train,
    }
    ids, pads = tok(["A red circle"])
    assert ids[0, 0] != 0 and pads[0, 0] == 0


def test_same_inputs_give_identical_bytes(dataset, tmp_path):
    """No temporary path, thread count or timestamp leaks into the artifact."""
    a = build_tokenizer(dataset, tmp_path / "a", vocab_size=300)
    b = build_tokenizer(dataset.as_uri(), tmp_path / "b", vocab_size=300)
    assert a.sha256 == b.sha256
    assert (tmp_path / "a" / MODEL_FILE).read_bytes() == (tmp_path / "b" / MODEL_FILE).read_bytes()
    assert b"/tmp" not in (tmp_path / "a" / MODEL_FILE).read_bytes()
    c = build_tokenizer(dataset, tmp_path / "c", vocab_size=300, split=None)
    assert c.info["dataset"]["num_captions"] == 3 * 60 and c.sha256 != a.sha256


def test_normalised_model_encodes_like_the_original(caption_corpus, tmp_path):
    raw = train_tokenizer(caption_corpus, tmp_path / "raw.model", vocab_size=60)
    norm = tmp_path / "norm.model"
    norm.write_bytes(_normalise_model(raw.read_bytes()))
    assert str(tmp_path).encode() not in norm.read_bytes()  # nothing of this machine
    texts = ["A green star near a tree.", "unseen words: zebra!"]
    assert Tokenizer(norm).encode(texts) == Tokenizer(raw).encode(texts)
    assert Tokenizer(norm).vocab_size == Tokenizer(raw).vocab_size


def test_bad_requests_are_refused(dataset, tmp_path):
    with pytest.raises(ValueError, match="no split 'holdout'"):
        build_tokenizer(dataset, tmp_path / "x", vocab_size=100, split="holdout")
    with pytest.raises(ValueError, match="vocab_size must be at least 8"):
        build_tokenizer(dataset, tmp_path / "x", vocab_size=2)
    with pytest.raises(DatasetError, match="no such dataset"):
        build_tokenizer(tmp_path / "none", tmp_path / "x", vocab_size=100)


def test_cli(dataset, tmp_path):
    parser = argparse.ArgumentParser(prog="tipsv2")
    data_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["data", "tokenizer", "--data", str(dataset), "--vocab-size", "200",
         "--out", str(tmp_path / "t"), "--split", "all"]
    )  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert args.handler(args) == 0
    info = json.loads((tmp_path / "t" / INFO_FILE).read_text())
    assert f"wrote {tmp_path / 't' / MODEL_FILE}" in printed.getvalue()
    assert info["sha256"][:16] in printed.getvalue() and info["dataset"]["split"] is None


def test_training_writes_across_filesystems(tmp_path, monkeypatch, caption_corpus):
    """The model is trained in a temporary folder and must reach an output on another
    filesystem (a volume mounted into a pod): a plain rename fails there with EXDEV."""
    import shutil
    import tempfile

    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a filesystem of its own")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = Path(tempfile.mkdtemp(dir=shm)) / "tokenizer.model"
    try:
        train_tokenizer(caption_corpus, out, vocab_size=50)
        assert Tokenizer(str(out))(["a red star"], 8)[0][0][0] != 0  # a model that loads
        assert sorted(p.name for p in out.parent.iterdir()) == ["tokenizer.model"]
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
