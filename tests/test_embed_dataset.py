"""`tipsv2 embed dataset` on real Ray Data and `tipsv2 search` over its faiss index:
every image embedded once and equal to `tipsv2 embed image`'s computation, resume after
lost, damaged and killed parts, refused mixes of settings, and search results equal to
an exact numpy nearest-neighbour search."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main as cli_main
from tipsv2_core.atomic import COMPLETE_FILE
from tipsv2_core.data.shards import iter_samples, open_dataset
from tipsv2_core.export import export_checkpoint
from tipsv2_core.inference import embed_pixels, image_tensor
from tipsv2_core.models.io import save_model
from tipsv2_core.search.store import (
    PARTS_DIR,
    load_embeddings,
    part_info,
    read_manifest,
)
from tipsv2_core.serving.servable import load_servable
from tipsv2_core.text import train_tokenizer

pytestmark = pytest.mark.integration
SIZE = 112


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from tipsv2_core.data.synth_dataset import write_synthetic_dataset

    out = tmp_path_factory.mktemp("embed_ds") / "synth"
    return write_synthetic_dataset(out, 40, image_size=SIZE, shard_size=10, progress=False)


@pytest.fixture(scope="module")
def export(tmp_path_factory, nano, caption_corpus) -> Path:
    d = tmp_path_factory.mktemp("embed_model")
    ckpt = save_model(nano, d / "native")
    tok = train_tokenizer(caption_corpus, ckpt / "tokenizer.model", vocab_size=60)
    export_checkpoint(ckpt, d / "onnx", image_sizes=(SIZE,), batches=(1, 2), tokenizer=tok)
    return d / "onnx"


def embed(export: Path, dataset: Path, out: Path, workers: int) -> Path:
    code = cli_main(["embed", "dataset", "--model", str(export), "--data", str(dataset),
                     "--out", str(out), "--caption", "alt_text", "--workers", str(workers),
                     "--no-progress"])  # fmt: skip
    assert code == 0
    return out


@pytest.fixture(scope="module")
def embedded(dataset, export, tmp_path_factory) -> Path:
    """The dataset embedded in-process (--workers 0), with the alt-texts."""
    return embed(export, dataset, tmp_path_factory.mktemp("embed_out") / "emb", workers=0)


TIPSV2 = str(Path(sys.executable).with_name("tipsv2"))


def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([TIPSV2, *argv], capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip


@pytest.mark.slow
def test_ray_data_writes_the_same_parts_as_in_process(embedded, dataset, export, tmp_path):
    """Two Ray Data actors on a local Ray: every part equal to the in-process run's."""
    on_ray = embed(export, dataset, tmp_path / "emb", workers=2)
    assert read_manifest(on_ray).parts == read_manifest(embedded).parts
    a, b = load_embeddings(on_ray), load_embeddings(embedded)
    assert a.keys == b.keys and a.captions == b.captions
    for cls in ("cls1", "cls2"):
        np.testing.assert_allclose(a.vectors[cls], b.vectors[cls], atol=1e-6)


def test_every_image_is_embedded_once_as_embed_image_does(embedded, dataset, export):
    manifest = read_manifest(embedded)
    assert manifest.complete and (embedded / COMPLETE_FILE).is_file()
    info = open_dataset(dataset)
    assert sorted(manifest.parts) == sorted(
        Path(s).name.replace(".tar", ".parquet") for s in info.shards()
    )
    emb = load_embeddings(embedded)
    assert sorted(emb.keys) == sorted(info.manifest.column("key").to_pylist())
    assert emb.vectors["cls1"].shape == (len(emb.keys), manifest.dim)
    # Each row is what `tipsv2 embed image` computes for that image (same resize, same model).
    vision = load_servable(export).model.vision
    samples = {s.key: s for s in iter_samples(dataset)}
    row = {k: i for i, k in enumerate(emb.keys)}
    for key in list(samples)[::7]:
        want = embed_pixels(vision, image_tensor(samples[key].image, SIZE)[None])
        for cls in ("cls1", "cls2"):
            np.testing.assert_allclose(emb.vectors[cls][row[key]], want[cls][0], atol=1e-5)
        assert emb.captions[row[key]] == samples[key].meta["alt_text"]
    assert (embedded / "index" / "cls1.faiss").is_file()


def test_search_equals_exact_numpy_search_and_finds_an_image_itself(embedded, dataset):
    r = cli("search", "--index", str(embedded), "a red star", "-k", "5", "--json")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert len(hits) == 5
    # The reference: cosine similarity of the query against every row, by numpy.
    from components.search import query_model

    servable = query_model(embedded)
    q = servable.embed_texts(["a red star"])[0]
    emb = load_embeddings(embedded)
    scores = emb.vectors["cls1"] @ q
    best = np.argsort(-scores)[:5]
    assert [h["key"] for h in hits] == [emb.keys[i] for i in best]
    np.testing.assert_allclose([h["score"] for h in hits], scores[best], atol=1e-5)
    assert all(h["caption"] for h in hits)
    # An image of the dataset, queried by its own file, is its own nearest neighbour.
    sample = next(iter_samples(dataset))
    img = embedded.parent / "query.png"
    sample.image.save(img)
    r = cli("search", "--index", str(embedded), "--image", str(img), "-k", "3", "--json")
    assert r.returncode == 0, r.stderr
    top = json.loads(r.stdout)[0]
    assert top["key"] == sample.key and top["score"] > 0.999


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_resume_redoes_only_lost_and_damaged_parts(embedded, export, dataset, tmp_path):
    out = _copy(embedded, tmp_path / "emb")
    before = load_embeddings(out)
    parts = sorted((out / PARTS_DIR).glob("*.parquet"))
    parts[0].unlink()  # lost
    data = parts[1].read_bytes()
    parts[1].write_bytes(data[: len(data) // 2])  # damaged: no Parquet footer
    stale = out / PARTS_DIR / f".{parts[2].stem}.tmp-host-1-1.parquet"
    stale.write_bytes(b"half a part")
    (out / COMPLETE_FILE).unlink()
    r = cli("embed", "dataset", "--model", str(export), "--data", str(dataset), "--out",
            str(out), "--caption", "alt_text", "--workers", "0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"{len(parts) - 2} done before (skipped), 2 to embed" in r.stderr
    assert not stale.exists()
    after = load_embeddings(out)
    assert after.keys == before.keys
    for cls in ("cls1", "cls2"):
        np.testing.assert_allclose(after.vectors[cls], before.vectors[cls], atol=1e-6)


def test_changed_settings_are_refused_naming_them(embedded, export, dataset, tmp_path):
    out = _copy(embedded, tmp_path / "emb")
    r = cli("embed", "dataset", "--model", str(export), "--data", str(dataset), "--out",
            str(out), "--caption", "alt_text", "--image-size", "56", "--workers", "0")  # fmt: skip
    assert r.returncode == 2
    assert "image_size: 112 -> 56" in r.stderr and "--force" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    other = tmp_path / "not-ours"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    r = cli("embed", "dataset", "--model", str(export), "--data", str(dataset), "--out",
            str(other), "--workers", "0")  # fmt: skip
    assert r.returncode == 2 and "not an embeddings directory" in r.stderr
    assert (other / "notes.txt").read_text() == "keep me"


def visible_parts(out: Path) -> list[Path]:
    """Parts a reader sees: not the hidden temporary files (`.NAME.tmp-….parquet`) that
    pathlib's glob would also match."""
    if not (out / PARTS_DIR).is_dir():
        return []
    return [p for p in (out / PARTS_DIR).glob("*.parquet") if not p.name.startswith(".")]


def _kill_once(cmd: list[str], written: Callable[[], object]) -> None:
    """Runs `cmd` and SIGKILLs it as soon as `written()` is truthy (a part on disk): a
    write killed half-way, as a lost machine leaves it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not written():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no part was written within 240 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


def test_a_killed_run_leaves_only_whole_parts_and_the_rerun_finishes(export, dataset, tmp_path):
    out = tmp_path / "emb"
    # 448 px on one core: a few seconds per shard, time to kill it between parts.
    cmd = [TIPSV2, "embed", "dataset", "--model", str(export),
           "--data", str(dataset), "--out", str(out), "--workers", "0", "--image-size", "448",
           "--batch-size", "2", "--no-progress"]  # fmt: skip
    _kill_once(cmd, lambda: visible_parts(out))
    shards = len(open_dataset(dataset).shards())
    parts = visible_parts(out)
    assert 1 <= len(parts) < shards, "the run finished before it could be killed"
    for p in parts:  # every visible part is whole: it opens and holds its recorded rows
        info = part_info(p)
        assert info is not None and pq.ParquetFile(p).metadata.num_rows == info["rows"]
    assert not (out / COMPLETE_FILE).exists()
    r = cli("search", "--index", str(out), "a star")
    assert r.returncode == 2 and "incomplete" in r.stderr
    r = cli(*cmd[1:-1])
    assert r.returncode == 0, r.stderr
    assert f"{len(parts)} done before (skipped)" in r.stderr
    assert [p.name for p in (out / PARTS_DIR).iterdir() if p.name.startswith(".")] == []
    emb = load_embeddings(out)
    assert sorted(emb.keys) == sorted(open_dataset(dataset).manifest.column("key").to_pylist())


def test_a_killed_forced_rewrite_leaves_the_previous_embeddings(
    embedded, export, dataset, tmp_path
):
    """`--force` over embeddings made with other settings builds the new ones beside the
    old and swaps them in when complete: killed half-way, the old ones are still there,
    whole and searchable; a rerun that finishes replaces them and leaves nothing else."""
    out = _copy(embedded, tmp_path / "emb")
    before = load_embeddings(out)
    cmd = [TIPSV2, "embed", "dataset", "--model", str(export), "--data", str(dataset),
           "--out", str(out), "--workers", "0", "--image-size", "448", "--batch-size", "2",
           "--force", "--no-progress"]  # fmt: skip
    _kill_once(cmd, lambda: [p for w in tmp_path.glob(".emb.tmp-*") for p in visible_parts(w)])
    after = load_embeddings(out)  # still complete, with the old settings
    assert after.keys == before.keys and read_manifest(out).settings.image_size == SIZE
    np.testing.assert_array_equal(after.vectors["cls1"], before.vectors["cls1"])
    r = cli("search", "--index", str(out), "a star", "--json")
    assert r.returncode == 0, r.stderr

    r = cli("embed", "dataset", "--model", str(export), "--data", str(dataset), "--out",
            str(out), "--workers", "0", "--image-size", "56", "--force")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert read_manifest(out).settings.image_size == 56 and load_embeddings(out).keys
    # Nothing of either run beside it: the killed one's sibling is swept, the old copy gone.
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith((".emb.tmp", ".emb.old"))] == []


def test_search_refuses_another_models_weights(embedded, tmp_path, nano):
    from tests.conftest import randomize_
    from tipsv2_core.models.tips import TIPSModel

    other = save_model(randomize_(TIPSModel("nano14"), seed=5), tmp_path / "other")
    r = cli("search", "--index", str(embedded), "--model", str(other), "a star")
    assert r.returncode == 2 and "not the model that embedded" in r.stderr


@pytest.mark.slow
def test_an_s3_output_is_published_whole_and_searched_from_its_mirror(
    embedded, dataset, export, s3_env, monkeypatch, capsys
):
    """`--out s3://…` on the real S3 gateway: the prefix gets a version with the parts,
    the index and COMPLETE, and COMPLETE naming it; search reads it through a local
    mirror with the local run's answers; a rerun skips every shard and replaces the
    version, leaving no other; a prefix that lost its COMPLETE object is refused."""
    from components import storage
    from components.embed_dataset import fetch_embeddings
    from components.s3_publish import current_root
    from components.search import search
    from tipsv2_core.search.store import EmbeddingsError

    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    uri = "s3://tipsv2/embeddings/synth"

    def version_files() -> list[str]:
        """The files of the current version; nothing else is under the prefix."""
        version = current_root(uri)[len(uri) + 1 :]
        names = storage.list_files(uri)
        assert all(n == COMPLETE_FILE or n.startswith(f"{version}/") for n in names)
        return [n[len(version) + 1 :] for n in names if n != COMPLETE_FILE]

    embed(export, dataset, uri, workers=0)
    first = current_root(uri)
    names = version_files()
    parts = sum(n.startswith(f"{PARTS_DIR}/") for n in names)
    assert COMPLETE_FILE in names and parts == len(open_dataset(dataset).shards())
    a, b = load_embeddings(fetch_embeddings(uri)), load_embeddings(embedded)
    assert list(a.keys) == list(b.keys)
    np.testing.assert_array_equal(a.vectors["cls1"], b.vectors["cls1"])
    want = [h.key for h in search(embedded, text="a star", k=5)]
    assert [h.key for h in search(uri, text="a star", k=5)] == want

    embed(export, dataset, uri, workers=0)
    assert current_root(uri) != first and version_files() == names
    assert f"{parts} done before (skipped), 0 to embed" in capsys.readouterr().err

    storage.default_storage().client(uri).delete_object(
        Bucket="tipsv2", Key=f"embeddings/synth/{COMPLETE_FILE}"
    )
    with pytest.raises(EmbeddingsError, match=f"no {COMPLETE_FILE} object"):
        fetch_embeddings(uri)
