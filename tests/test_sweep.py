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
    assert "removed: 2 incomplete roots" in capsys.readouterr().out
    assert storage.list_files(f"{ROOT}/killed") == []
    assert storage.list_files(f"{ROOT}/deep") == []
    assert COMPLETE_FILE in storage.list_files(f"{ROOT}/good")
    assert storage.list_files(f"{ROOT}/notes") == ["readme.txt"]
    assert cli_main(["data", "sweep", ROOT, "--min-age", "0s"]) == 0
    assert "nothing to sweep" in capsys.readouterr().out


def test_sweep_of_a_local_folder_and_bad_durations(dataset, tmp_path, capsys):
    from components.sweep import find_leftovers

    shutil.copytree(dataset, tmp_path / "ok")
    _killed_copy(dataset, tmp_path / "half")
    assert [Path(f.uri).name for f in find_leftovers(tmp_path, 0)] == ["half"]
    with pytest.raises(SystemExit):
        cli_main(["data", "sweep", str(tmp_path), "--min-age", "soon"])
    assert "expected a duration like 30m" in capsys.readouterr().err
