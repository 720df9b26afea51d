"""`tipsv2 data sweep` on the real S3 gateway: roots that a write killed outright left
without COMPLETE are listed (datasets and embeddings alike), recent ones are left alone,
--delete removes exactly those, and complete datasets and foreign objects are untouched."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.cli import main as cli_main
from tipsv2_core.atomic import COMPLETE_FILE

pytestmark = pytest.mark.integration
ROOT = "s3://tipsv2/sweep"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from tipsv2_core.data.synth_dataset import write_synthetic_dataset

    out = tmp_path_factory.mktemp("sweep") / "synth"
    return write_synthetic_dataset(out, 12, image_size=112, shard_size=6, progress=False)


def _killed_copy(src: Path, dst: Path) -> Path:
    """What a killed write leaves: the files, no COMPLETE."""
    shutil.copytree(src, dst)
    (dst / COMPLETE_FILE).unlink()
    return dst


def test_sweep_finds_and_removes_only_what_killed_writes_left(
    dataset, s3_env, tmp_path, monkeypatch, capsys
):
    from components import storage
    from components.datasets import publish
    from components.sweep import find_leftovers

    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    publish(dataset, f"{ROOT}/good")
    assert (dataset / COMPLETE_FILE).is_file()  # the local copy stays complete
    storage.put_directory(_killed_copy(dataset, tmp_path / "killed"), f"{ROOT}/killed")
    emb = tmp_path / "emb"
    (emb / "parts").mkdir(parents=True)
    (emb / "parts" / "train-000000.parquet").write_bytes(b"half a part")
    (emb / "embeddings.json").write_text("{}")
    storage.put_directory(emb, f"{ROOT}/deep/emb")
    storage.write_bytes(f"{ROOT}/notes/readme.txt", b"not ours")

    assert find_leftovers(ROOT) == []  # all younger than the default hour: maybe in progress
    assert [f.uri for f in find_leftovers(ROOT, 0)] == [f"{ROOT}/killed", f"{ROOT}/deep/emb"]

    assert cli_main(["data", "sweep", ROOT, "--min-age", "0s"]) == 0
    out = capsys.readouterr().out
    assert f"{ROOT}/killed" in out and f"{ROOT}/deep/emb" in out and "would remove" in out
    assert f"{ROOT}/good " not in out and "notes" not in out
    assert storage.list_files(f"{ROOT}/killed")  # a dry run deletes nothing

    assert cli_main(["data", "sweep", ROOT, "--min-age", "0s", "--delete"]) == 0
    assert "removed: 2 left-over roots of" in capsys.readouterr().out
    assert storage.list_files(f"{ROOT}/killed") == []
    assert storage.list_files(f"{ROOT}/deep") == []
    assert COMPLETE_FILE in storage.list_files(f"{ROOT}/good")
    assert storage.list_files(f"{ROOT}/notes") == ["readme.txt"]
    assert cli_main(["data", "sweep", ROOT, "--min-age", "0s"]) == 0
    assert "nothing to sweep" in capsys.readouterr().out


def test_sweep_finds_what_interrupted_rewrites_left_beside_a_published_dataset(
    dataset, s3_env, tmp_path, monkeypatch, capsys
):
    """A rewrite killed before its commit leaves a version no COMPLETE names; one killed
    after it (before removing what it replaced) leaves the old version, or, over a
    dataset written before versions, its files beside the new COMPLETE. Sweep lists and
    removes just those; the current version and a report beside it stay."""
    from components import storage
    from components.datasets import dataset_metadata, publish
    from components.s3_publish import current_root
    from components.shard_check import inspect_shards
    from components.sweep import find_leftovers
    from tipsv2_core.data.layout import read_manifest

    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    prefix = f"{ROOT}/rewritten"
    publish(dataset, prefix)
    current = current_root(prefix)
    want = storage.list_files(prefix)
    storage.write_bytes(f"{prefix}/validation/validation.json", b"{}")  # a report: not ours
    killed = _killed_copy(dataset, tmp_path / "killed")
    orphan = f"{prefix}/versions/v20200101T000000Z-0000beef"  # killed before its commit
    storage.put_directory(killed, orphan)
    superseded = f"{prefix}/versions/v20190101T000000Z-0000cafe"  # killed after it
    storage.put_directory(dataset, superseded)
    storage.put_directory(killed, prefix)  # a whole-prefix dataset's files, after it too
    flat = sorted(storage.list_files(killed))

    found = {f.uri: f for f in find_leftovers(prefix, 0)}
    assert sorted(found) == [prefix, superseded, orphan]
    assert sorted(found[prefix].names) == flat  # only those files: not COMPLETE, not versions
    assert found[orphan].names == found[superseded].names == ()  # whole folders
    # Seen from the bucket, the same; from the prefix's parent, too.
    assert {f.uri for f in find_leftovers(ROOT, 0)} >= set(found)
    assert current_root(prefix) == current

    assert cli_main(["data", "sweep", prefix, "--min-age", "0s", "--delete"]) == 0
    assert "removed: 3 left-over roots of" in capsys.readouterr().out
    assert storage.list_files(prefix) == sorted([*want, "validation/validation.json"])
    assert find_leftovers(prefix, 0) == []
    with dataset_metadata(prefix) as (meta, root):  # still read whole, from its version
        assert root == current
        cols = read_manifest(meta).select(["key", "shard"]).to_pydict()
        assert len(cols["key"]) == 12
        assert {row["problem"] for row in inspect_shards(root, cols, 1)} == {""}


def test_sweep_of_a_local_folder_and_bad_durations(dataset, tmp_path, capsys):
    from components.sweep import find_leftovers

    shutil.copytree(dataset, tmp_path / "ok")
    _killed_copy(dataset, tmp_path / "half")
    assert [Path(f.uri).name for f in find_leftovers(tmp_path, 0)] == ["half"]
    with pytest.raises(SystemExit):
        cli_main(["data", "sweep", str(tmp_path), "--min-age", "soon"])
    assert "expected a duration like 30m" in capsys.readouterr().err
