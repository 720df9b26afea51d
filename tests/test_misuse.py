"""The misuse table: every command on every kind of bad input ends in one line naming the
thing, exit code 2, and nothing half-written — never a traceback.

Each case is (command line, text the error must contain, paths that must be untouched
or absent afterwards). The commands run in this process through the real parser and
handlers (`pipelines.cli.main`), as `tipsv2` would run them.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.cli import main

pytestmark = pytest.mark.unit


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width × height pixels and holds none: a decompression bomb's
    header (what an image decoder sizes its buffers by)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, Path]:
    """A workspace: a checkpoint, images good and bad, a file, a folder with content."""
    d = tmp_path_factory.mktemp("misuse")
    assert main(["model", "init", "--variant", "nano14", "--out", str(d / "ckpt")]) == 0
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(d / "ok.png")
    (d / "bomb.png").write_bytes(_png_header(60000, 60000))
    (d / "notes.txt").write_text("keep me")
    (d / "work").mkdir()
    (d / "work" / "results.csv").write_text("a,b\n1,2\n")
    (d / "out.npz").mkdir()  # an output name taken by a folder
    # A checkpoint whose meta.json names another variant than its weights are.
    shutil.copytree(d / "ckpt", d / "liar")
    meta = json.loads((d / "liar" / "meta.json").read_text())
    (d / "liar" / "meta.json").write_text(json.dumps({**meta, "variant": "ti14"}))
    from tipsv2_core.data.synth_dataset import write_synthetic_dataset

    write_synthetic_dataset(str(d / "synth"), num_images=16, image_size=112, progress=False)
    names = ("ckpt", "ok.png", "bomb.png", "notes.txt", "work", "liar", "synth")
    return {k: d / k for k in names} | {
        "root": d,
        "dir.npz": d / "out.npz",
    }


def _dead_server() -> str:
    """A tracking URI where nothing listens (a port just freed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://user:hunter2@127.0.0.1:{port}"


def _embed(ws, *extra: str, image: str = "ok.png", ckpt: str = "ckpt") -> list[str]:
    return ["embed", "image", "--checkpoint", str(ws[ckpt]), "--image-size", "112",
            str(ws[image]), *extra]  # fmt: skip


DRY = ["train", "--dry-run", "--set"]

# (case id, argv builder, text the one line must contain, keys of ws that must be intact)
CASES = [
    ("init-out-file", lambda ws: ["model", "init", "--variant", "nano14", "--out",
                                  str(ws["notes.txt"])], "is a file", ["notes.txt"]),
    ("init-out-full", lambda ws: ["model", "init", "--variant", "nano14", "--out",
                                  str(ws["work"])], "not empty", ["work"]),
    ("export-out-full", lambda ws: ["export", "--checkpoint", str(ws["ckpt"]), "--out",
                                    str(ws["work"])], "not empty", ["work"]),
    ("export-out-file", lambda ws: ["export", "--checkpoint", str(ws["ckpt"]), "--out",
                                    str(ws["notes.txt"])], "is a file", ["notes.txt"]),
    ("synth-out-file", lambda ws: ["data", "synth", "--num-images", "2", "--out",
                                   str(ws["notes.txt"])], "not a dataset", ["notes.txt"]),
    ("synth-zero", lambda ws: ["data", "synth", "--num-images", "0", "--out",
                               str(ws["root"] / "never")], "num_images=0", []),
    ("train-out-file", lambda ws: ["train", "--data", str(ws["work"]), "--out",
                                   str(ws["notes.txt"]), "--no-ray", "--no-track"],
     "is a file, not a run directory", ["notes.txt"]),
    ("set-zero-steps", lambda ws: [*DRY, "stages.0.steps=0"], "stages.0.steps", []),
    ("set-zero-heads", lambda ws: [*DRY, "heads.out_dim=0"], "heads.out_dim=0", []),
    ("set-zero-log", lambda ws: [*DRY, "run.log_every=0"], "run.log_every=0", []),
    ("set-zero-ckpt", lambda ws: [*DRY, "run.checkpoint_every=0"], "run.checkpoint_every", []),
    ("set-mask-ratio", lambda ws: [*DRY, "data.mask_ratio=1.5"], "data.mask_ratio=1.5", []),
    ("set-negative-lr", lambda ws: [*DRY, "optim.lr=-1"], "optim.lr", []),
    ("set-temperature", lambda ws: [*DRY, "loss.teacher_temp=0"], "loss.teacher_temp=0", []),
    ("set-scale", lambda ws: [*DRY, "data.local_scale=[0.5,0.1]"], "data.local_scale", []),
    ("set-unknown-key", lambda ws: [*DRY, "optim.learning_rate=1"], "optim.learning_rate", []),
    ("embed-bomb", lambda ws: _embed(ws, "--output", str(ws["root"] / "b.npz"), image="bomb.png"),
     "decompression bomb", []),
    ("embed-output-under-file", lambda ws: _embed(ws, "--output", str(ws["notes.txt"] / "e.npz")),
     "notes.txt", ["notes.txt"]),
    ("embed-output-is-dir", lambda ws: _embed(ws, "--output", str(ws["dir.npz"])),
     "is a directory", []),
    ("embed-zero-batch", lambda ws: _embed(ws, "--batch-size", "0", "--output",
                                           str(ws["root"] / "z.npz")), "--batch-size", []),
    ("embed-meta-disagrees", lambda ws: _embed(ws, "--output", str(ws["root"] / "m.npz"),
                                               ckpt="liar"), "do not fit the variant 'ti14'", []),
    ("runs-list-dead-server", lambda ws: ["runs", "list", "--tracking-uri", _dead_server()],
     "does not answer", []),
    ("promote-dead-server", lambda ws: ["promote", "m", "--version", "1", "--tracking-uri",
                                        _dead_server()], "does not answer", []),
    ("rollback-dead-server", lambda ws: ["rollback", "m", "--to-version", "1", "--tracking-uri",
                                         _dead_server()], "does not answer", []),
    ("eval-output-under-file", lambda ws: ["eval", "--checkpoint", str(ws["ckpt"]), "--dataset",
                                           str(ws["work"]), "--output",
                                           str(ws["notes.txt"] / "m.json")], "work", ["notes.txt"]),
]  # fmt: skip


def _snapshot(path: Path) -> object:
    if path.is_dir():
        return sorted((p.relative_to(path).as_posix(), p.read_bytes()) for p in path.rglob("*")
                      if p.is_file())  # fmt: skip
    return path.read_bytes()


@pytest.mark.parametrize(
    ("argv", "says", "intact"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_misuse_is_one_line_exit_2_nothing_written(capsys, ws, argv, says, intact):
    before = {k: _snapshot(ws[k]) for k in intact}
    entries = {p.name for p in ws["root"].iterdir()}
    args = argv(ws)
    rc = main(args)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, (args, out, err)
    assert len(lines) == 1 and lines[0].startswith(f"tipsv2 {args[0]}: error: "), err
    assert says in lines[0], lines[0]
    assert "Traceback" not in err and "hunter2" not in err
    assert {k: _snapshot(ws[k]) for k in intact} == before
    assert {p.name for p in ws["root"].iterdir()} == entries  # nothing new, no leftovers


def test_a_server_that_never_answers_fails_fast_too(capsys):
    """A tracking server that accepts connections and then says nothing (a hung process,
    a firewall that drops replies): `runs list` and `promote` give up after the health
    check's few seconds, in one line, instead of MLflow's minutes of retries."""
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes handshakes; nothing ever reads or replies
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        for argv in (["runs", "list"], ["promote", "m", "--version", "1"]):
            start = time.monotonic()
            rc = main([*argv, "--tracking-uri", uri])
            took = time.monotonic() - start
            err = capsys.readouterr().err.strip().splitlines()
            assert rc == 2 and len(err) == 1 and "does not answer" in err[0], err
            assert took < 15, f"{argv[0]} took {took:.1f} s"


# ------------------------------------------------------------ a read-only or a full disk


def _mount_tmpfs(where: Path, options: str) -> bool:
    import subprocess

    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, text=True)  # fmt: skip
    return done.returncode == 0


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    """{"read-only": folder, "full": folder}. As root (where file modes do not stop a
    writer) two tiny tmpfs mounts, one read-only and one filled to the last byte; as
    another user a folder of mode 555, and no full disk. Skipped where neither works."""
    import os
    import subprocess

    d = tmp_path_factory.mktemp("disks")
    found, mounted = {}, []
    try:
        yield from _disks(d, found, mounted)
    finally:
        for where in mounted:
            subprocess.run(["umount", str(where)], capture_output=True)
        if (d / "ro").exists() and os.geteuid() != 0:
            (d / "ro").chmod(0o755)


def _disks(d: Path, found: dict[str, Path], mounted: list[Path]):
    import os

    if os.geteuid() != 0:
        (d / "ro").mkdir()
        (d / "ro").chmod(0o555)
        found["read-only"] = d / "ro"
    else:
        for name, options in (("ro", "ro,size=1m"), ("full", "size=256k")):
            if _mount_tmpfs(d / name, options):
                mounted.append(d / name)
        if d / "ro" in mounted:
            found["read-only"] = d / "ro"
        if d / "full" in mounted:
            with open(d / "full" / "filler", "wb", buffering=0) as f:  # every block taken
                try:
                    while True:
                        f.write(b"\0" * 4096)
                except OSError:
                    pass
            found["full"] = d / "full"
    yield found


DISK_ERRORS = {"read-only": ("Read-only file system", "Permission denied"),
               "full": ("No space left on device",)}  # fmt: skip
# (case id, argv builder given the workspace and the output path)
DISK_CASES = [
    ("model-init", lambda ws, out: ["model", "init", "--variant", "nano14", "--out", out]),
    ("embed", lambda ws, out: _embed(ws, "--output", out + ".npz")),
    ("synth", lambda ws, out: ["data", "synth", "--num-images", "4", "--out", out,
                               "--no-progress"]),
    ("export", lambda ws, out: ["export", "--checkpoint", str(ws["ckpt"]), "--out", out]),
    ("convert", lambda ws, out: ["convert", str(ws["ckpt"]), out]),
    ("tokenizer", lambda ws, out: ["data", "tokenizer", "--data", str(ws["synth"]),
                                   "--vocab-size", "60", "--out", out]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "disk"),
    [
        pytest.param(
            argv,
            disk,
            id=f"{name}-{disk}",
            # The export builds every graph before its first write: ~25 s on a loaded core.
            marks=[pytest.mark.slow] if (name, disk) == ("export", "full") else [],
        )
        for name, argv in DISK_CASES
        for disk in ("read-only", "full")
    ],
)
def test_an_output_on_a_read_only_or_full_disk_is_one_line_and_leaves_nothing(
    capsys, ws, disks, disk, argv
):
    if disk not in disks:
        pytest.skip(f"no {disk} disk here: needs root and tmpfs mounts (or, read-only, a "
                    "non-root user)")  # fmt: skip
    where = disks[disk]
    before = sorted(p.name for p in where.iterdir())
    out = str(where / "result")
    args = argv(ws, out)
    rc = main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, (args, err)
    assert len(lines) == 1 and lines[0].startswith(f"tipsv2 {args[0]}: error: {out}"), err
    assert any(reason in lines[0] for reason in DISK_ERRORS[disk]), lines[0]
    assert sorted(p.name for p in where.iterdir()) == before  # nothing half-written
