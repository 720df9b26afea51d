"""Data versioning with DVC: version ids for lineage, the remote, and running DVC.

The repository root holds the DVC pipeline (`dvc.yaml`, `params.yaml`)
whose stages call the `tipsv2` CLI. Two remotes are defined in the committed
`.dvc/config`, with neither credentials nor machine paths:

- `local` (the default): `$TIPSV2_HOME/dvc-remote`. The committed URL,
  `../.tipsv2/dvc-remote` (DVC resolves it relative to `.dvc/`), is only right for the
  default `TIPSV2_HOME=./.tipsv2`; so every push and pull of ours (`push`, `pull`,
  `tipsv2 data push|pull`) first points `local` at the current `$TIPSV2_HOME` in
  `.dvc/config.local`, which git ignores (`point_local_remote`; `configure_remote` and
  `tipsv2 data remote` do it too). A bare `dvc push` reads the same file, so it follows
  the home of the last of these.
- `s3`: `s3://tipsv2/dvc`, the data bucket of the local stack (or any S3). The endpoint
  and credentials come from the environment at run time (`AWS_ENDPOINT_URL`,
  `AWS_ACCESS_KEY_ID`, ...), as `components.settings.configure()` loads them from the
  stack's env file; `configure_remote(kind="s3")` makes it the default and records the
  endpoint (not the credentials) in `.dvc/config.local`.

`dataset_version(path)` is what later steps record as `data_version` (docs/architecture.md,
"Lineage"): the DVC md5 of a tracked output, from `dvc.lock` (a pipeline stage's output)
or from `<path>.dvc` (`dvc add`). DVC itself runs as a subprocess of this interpreter
(`python -m dvc`), with the no-telemetry switches (`settings.TELEMETRY_OFF`), so it is
the same DVC the lock pins and the CLI's `tipsv2` is on its PATH for `dvc repro`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from components.settings import DATA_BUCKET, configure, disable_telemetry, tipsv2_home
from tipsv2_core.errors import UserError
from tipsv2_core.uri import strip_file_scheme

__all__ = [
    "LOCAL_REMOTE",
    "S3_REMOTE",
    "Remote",
    "VersioningError",
    "configure_remote",
    "data_version",
    "dataset_version",
    "dvc_environment",
    "find_root",
    "point_local_remote",
    "pull",
    "push",
    "run_dvc",
]

LOCK_FILE = "dvc.lock"
LOCAL_REMOTE = "local"
S3_REMOTE = "s3"
REMOTE_DIR = "dvc-remote"  # below $TIPSV2_HOME
S3_REMOTE_URL = f"s3://{DATA_BUCKET}/dvc"
# The MinIO-dialect gateway rejects the streaming checksums of newer AWS SDKs.
S3_CHECKSUM_ENV = {"AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED"}


class VersioningError(UserError, RuntimeError):
    """A path is not tracked by DVC, its workspace copy is stale, or a DVC command failed."""


@dataclass(frozen=True)
class Remote:
    """The DVC remote a repository pushes to by default (its URL holds no credentials)."""

    name: str
    url: str


def find_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) that holds `.dvc/`."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    raise VersioningError(f"{here}: not inside a DVC repository (no .dvc/ folder above it)")


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise VersioningError(f"{path}: unreadable ({e})") from None


def _tracked_outs(root: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every tracked output: relative posix path -> (where it is recorded, its entry)."""
    outs: dict[str, tuple[str, dict[str, Any]]] = {}
    lock = root / LOCK_FILE
    if lock.is_file():
        doc = _read_yaml(lock) or {}
        for stage, entry in (doc.get("stages") or {}).items():
            for out in entry.get("outs") or []:
                outs[Path(out["path"]).as_posix()] = (f"{LOCK_FILE}:{stage}", out)
    return outs


def _workspace_size(path: Path) -> tuple[int, int]:
    """(files, bytes) below a folder, or (1, size) of a file; what DVC records per out."""
    if path.is_file():
        return 1, path.stat().st_size
    files = size = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            files += 1
            size += (Path(dirpath) / name).stat().st_size
    return files, size


def dataset_version(
    path: str | os.PathLike[str],
    repo: str | os.PathLike[str] | None = None,
    *,
    check: bool = True,
) -> str:
    """The DVC md5 of a tracked dataset (e.g. `3f2a….dir`), to record as `data_version`.

    Looked up in `<path>.dvc` (from `dvc add`) or in the repository's `dvc.lock` (a stage
    output). With `check`, the workspace copy must still have the file count and size
    DVC recorded: a cheap guard against recording the version of data that was changed
    (or regenerated) after the lock was written; run `dvc status` for a full check.
    """
    given = Path(path)
    if repo is not None:  # a relative path is relative to the repository
        root = find_root(repo)
        target = (given if given.is_absolute() else root / given).resolve()
    else:  # ... else to the working directory, as on a command line
        target = given.resolve()
        root = find_root(target.parent)
    try:
        rel = target.relative_to(root).as_posix()
    except ValueError:
        raise VersioningError(f"{target}: outside the DVC repository {root}") from None
    dot_dvc = target.with_name(target.name + ".dvc")
    entry: dict[str, Any] | None = None
    if dot_dvc.is_file():
        doc = _read_yaml(dot_dvc) or {}
        outs = doc.get("outs") or []
        entry, where = (outs[0], dot_dvc.name) if outs else (None, "")
    if entry is None:
        tracked = _tracked_outs(root)
        if rel not in tracked:
            known = ", ".join(sorted(tracked)) or "none"
            raise VersioningError(
                f"{rel}: not tracked by DVC (no {dot_dvc.name}, not an output in {LOCK_FILE}; "
                f"tracked outputs: {known}); run `dvc repro` or `dvc add {rel}`"
            )
        where, entry = tracked[rel]
    md5 = entry.get("md5")
    if not md5:
        raise VersioningError(f"{rel}: {where} records no md5 (hash {entry.get('hash')!r})")
    if check:
        if not target.exists():
            raise VersioningError(f"{rel}: recorded in {where} but missing; run `dvc pull`")
        files, size = _workspace_size(target)
        want = (int(entry.get("nfiles", 1)), int(entry.get("size", size)))
        if (files, size) != want:
            raise VersioningError(
                f"{rel}: the workspace copy ({files} files, {size} bytes) differs from "
                f"{where} ({want[0]} files, {want[1]} bytes): it changed after DVC recorded "
                "it; run `dvc repro` (or `dvc commit`) before recording its version"
            )
    return str(md5)


def data_version(path: str | os.PathLike[str], *, missing_ok: bool = False) -> str:
    """What checkpoints and MLflow record as `data_version` (docs/architecture.md,
    "Lineage"): the dataset's DVC md5 when DVC tracks it, else the sha256 of its manifest.

    A pipeline's dataset lives in the pipeline root, which DVC does not track, so there it
    is the manifest's content hash: equal manifests, equal version, whichever run produced
    them. When `path` holds no manifest.parquet (not a dataset): ValueError, or "" with
    `missing_ok` (for callers whose loader reports that with more detail).
    """
    try:
        return dataset_version(strip_file_scheme(path))
    except (VersioningError, OSError, ValueError):
        manifest = Path(strip_file_scheme(path)) / "manifest.parquet"
        if not manifest.is_file():
            if missing_ok:
                return ""
            raise ValueError(f"{path}: no manifest.parquet; not a dataset") from None
        return "manifest-sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]


def dvc_environment(
    home: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for a DVC subprocess: the caller's, plus the local stack's S3
    variables when it runs (credentials travel in the environment, never in a config
    file), the no-telemetry switches, and this interpreter's bin folder first on PATH (so
    `dvc repro` finds this `tipsv2`)."""
    env = dict(os.environ if environ is None else environ)
    configure(Path(home) if home else None, environ=env)
    disable_telemetry(env, S3_CHECKSUM_ENV)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    return env


def run_dvc(
    args: Sequence[str],
    repo: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs `dvc ARGS` in `repo`; raises VersioningError with DVC's output on failure."""
    cmd = [sys.executable, "-m", "dvc", *args]
    done = subprocess.run(
        cmd,
        cwd=repo,
        env=dict(env) if env is not None else dvc_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-4000:]
        raise VersioningError(f"dvc {' '.join(args)} failed ({done.returncode}):\n{output}")
    return done


def configure_remote(
    repo: str | os.PathLike[str],
    kind: Literal["auto", "local", "s3"] = "auto",
    home: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> Remote:
    """Makes `local` or `s3` the repository's default remote for this machine.

    Writes only `.dvc/config.local` (git-ignored): the default remote, the local remote's
    folder under `$TIPSV2_HOME`, or the S3 endpoint. "auto" picks `s3` when an S3 endpoint
    is known (the local stack runs, or `AWS_ENDPOINT_URL` is set), else `local`. `env`
    (default `dvc_environment(home)`) is what DVC runs with and where the endpoint is read.
    """
    root = Path(repo)
    env = dict(env) if env is not None else dvc_environment(home)
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if kind == "auto":
        kind = S3_REMOTE if endpoint else LOCAL_REMOTE
    if kind == LOCAL_REMOTE:
        remote = point_local_remote(root, home, env=env)
    elif kind == S3_REMOTE:
        remote = Remote(S3_REMOTE, S3_REMOTE_URL)
        run_dvc(["remote", "add", "--local", "--force", S3_REMOTE, remote.url], root, env=env)
        if endpoint:
            run_dvc(
                ["remote", "modify", "--local", S3_REMOTE, "endpointurl", endpoint], root, env=env
            )
    else:
        raise ValueError(f"unknown remote kind {kind!r}; use auto, local or s3")
    run_dvc(["remote", "default", "--local", remote.name], root, env=env)
    return remote


def point_local_remote(
    repo: str | os.PathLike[str],
    home: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> Remote:
    """Points the `local` remote at `$TIPSV2_HOME/dvc-remote` (created), in
    `.dvc/config.local`; which remote is the default is left as it is.

    home: default `$TIPSV2_HOME` of `env` (default `dvc_environment(home)`).
    """
    env = dict(env) if env is not None else dvc_environment(home)
    folder = (Path(home).resolve() if home else tipsv2_home(env)) / REMOTE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    remote = Remote(LOCAL_REMOTE, str(folder))
    run_dvc(["remote", "add", "--local", "--force", LOCAL_REMOTE, remote.url], repo, env=env)
    return remote


def push(
    repo: str | os.PathLike[str],
    remote: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> str:
    """`dvc push` (to `remote`, default: the repository's default); returns DVC's output.

    `env` defaults to `dvc_environment()`: the local stack's S3 credentials when it runs.
    The `local` remote is pointed at that environment's `$TIPSV2_HOME` first.
    """
    env = dict(env) if env is not None else dvc_environment()
    if remote in (None, LOCAL_REMOTE):
        point_local_remote(repo, env=env)
    args = ["push", *(["-r", remote] if remote else [])]
    return run_dvc(args, repo, env=env).stdout


def pull(
    repo: str | os.PathLike[str],
    remote: str | None = None,
    *,
    targets: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> str:
    """`dvc pull` (from `remote`, default: the repository's default); returns DVC's output.

    targets: stages to pull with the stages they depend on (`dvc pull --with-deps`), e.g.
    `["tokenizer"]` for the data half of a pipeline whose training never ran; default
    every output of dvc.yaml, which fails for outputs that were never produced. The `local`
    remote is pointed at `env`'s `$TIPSV2_HOME` first, as for `push`.
    """
    env = dict(env) if env is not None else dvc_environment()
    if remote in (None, LOCAL_REMOTE):
        point_local_remote(repo, env=env)
    args = ["pull", *(["-r", remote] if remote else [])]
    if targets:
        args += ["--with-deps", *targets]
    return run_dvc(args, repo, env=env).stdout
