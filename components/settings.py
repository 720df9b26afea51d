"""Where a step finds its storage and tracking: the local stack when it runs, else embedded.

`tipsv2 stack up` (see `components.stack`) writes `$TIPSV2_HOME/stack/stack.env`, a
user-only file with the gateway's generated credentials and the services' URLs. A step that
needs storage or tracking calls `configure()` once before its first boto3 / MLflow call:

- a service of the stack answers its health check -> that service's variables are loaded
  from the env file into `os.environ` (S3: `AWS_*`, `MLFLOW_S3_ENDPOINT_URL`; MLflow:
  `MLFLOW_TRACKING_URI` and the server's Basic credentials `MLFLOW_TRACKING_USERNAME` /
  `MLFLOW_TRACKING_PASSWORD`);
- otherwise the embedded defaults apply (docs/architecture.md, "Embedded defaults"): a
  local directory under `$TIPSV2_HOME/storage` and `sqlite:///$TIPSV2_HOME/mlflow.db`.

Variables already set in the environment win (the usual dotenv precedence), so a user or a
Kubernetes Secret can point a step at other services; `TIPSV2_STACK=off` ignores the stack.
This module reads files and probes two loopback URLs only: it never starts anything and
never prints a variable's value.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

DEFAULT_HOME = ".tipsv2"
# No usage reporting from Ray, Great Expectations, DVC or MLflow: these machines (CI,
# air-gapped clusters) have no way out, and a blocked report can stall a step. Every step,
# service and Kubernetes pod gets them (docs/architecture.md, "Embedded defaults").
TELEMETRY_OFF: Mapping[str, str] = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
ENV_FILE = "stack.env"
DATA_BUCKET = "tipsv2"
ARTIFACT_BUCKET = "mlflow"

# Which env-file variables belong to which service: each group is loaded only while its
# service is healthy, so a stack started with `--services s3` still gives S3 to steps and
# leaves tracking on the embedded SQLite store. MLFLOW_S3_ENDPOINT_URL goes with S3: the
# server proxies artifacts, and only a client reading an s3:// artifact location needs it.
S3_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "MLFLOW_S3_ENDPOINT_URL",
    "TIPSV2_STORAGE_ROOT",
)
# The env file also holds the MLflow server's Basic credentials (unless the stack was
# started with `--no-auth`), which MLflow's client sends when they are in the environment.
MLFLOW_CREDENTIAL_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
MLFLOW_KEYS = ("MLFLOW_TRACKING_URI", *MLFLOW_CREDENTIAL_KEYS)
# Credentials a caller set for a tracking server of their own: while any is set, the
# stack's are never added beside them.
USER_CREDENTIAL_KEYS = (*MLFLOW_CREDENTIAL_KEYS, "MLFLOW_TRACKING_TOKEN")
SECRET_KEYS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"})

HEALTH_TIMEOUT_S = 1.0


def tipsv2_home(environ: Mapping[str, str] | None = None) -> Path:
    """`$TIPSV2_HOME` (default `./.tipsv2`) as an absolute path; child processes get it too."""
    env = os.environ if environ is None else environ
    return Path(env.get("TIPSV2_HOME") or DEFAULT_HOME).expanduser().resolve()


def stack_dir(home: Path | None = None) -> Path:
    """The folder that holds the local stack's env file, state, data and logs."""
    return (home or tipsv2_home()) / "stack"


def env_file(home: Path | None = None) -> Path:
    """The stack's env file: `export KEY=value` lines, mode 600."""
    return stack_dir(home) / ENV_FILE


def read_env_file(path: Path) -> dict[str, str]:
    """Parses `KEY=value` / `export KEY=value` lines; `#` comments and blank lines are skipped.

    The stack writes unquoted values (URLs and URL-safe tokens), so a shell can `source` the
    file; matching quotes around a value are removed all the same for hand-edited files.
    """
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def is_healthy(url: str, timeout: float = HEALTH_TIMEOUT_S) -> bool:
    """True when GET `url` answers 2xx within `timeout` seconds (no proxies: loopback only)."""
    # A proxy from the environment must not see (or break) a loopback health check.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def s3_health_url(endpoint: str) -> str:
    """The MinIO-dialect liveness URL of an S3 gateway endpoint."""
    return endpoint.rstrip("/") + "/minio/health/live"


def mlflow_health_url(tracking_uri: str) -> str:
    """The MLflow tracking server's health URL."""
    return tracking_uri.rstrip("/") + "/health"


@dataclass(frozen=True)
class Settings:
    """Where steps read and write, and how each part was decided.

    `storage` / `tracking` are "stack" (loaded from the env file), "embedded" (the
    defaults) or "environment" (already set by the caller). `loaded` names the variables
    this call put into the environment (names only, never values).
    """

    home: Path
    storage: Literal["stack", "embedded", "environment"]
    tracking: Literal["stack", "embedded", "environment"]
    storage_root: str
    tracking_uri: str
    loaded: tuple[str, ...] = field(default=())


def _stack_enabled(environ: Mapping[str, str]) -> bool:
    return environ.get("TIPSV2_STACK", "").lower() not in {"0", "off", "false", "no"}


def _same_server(a: str, b: str) -> bool:
    return a.strip().rstrip("/") == b.strip().rstrip("/")


def _stack_credentials(
    tracking_uri: str, values: Mapping[str, str], environ: MutableMapping[str, str]
) -> list[str]:
    """Loads the stack's MLflow credentials from `values` (its env file) into `environ` when
    `tracking_uri` is the stack's server and `environ` holds no credentials of its own."""
    uri = values.get("MLFLOW_TRACKING_URI")
    if not uri or not _same_server(uri, tracking_uri):
        return []
    if any(environ.get(k) for k in USER_CREDENTIAL_KEYS):
        return []
    return _load(MLFLOW_CREDENTIAL_KEYS, values, environ)


def load_stack_credentials(
    tracking_uri: str, home: Path | None = None, environ: MutableMapping[str, str] | None = None
) -> tuple[str, ...]:
    """Puts the local stack's MLflow credentials into `environ` (default `os.environ`) when
    `tracking_uri` is the stack's server; returns the names loaded (never the values).

    A command given the stack's URL by hand (`--tracking-uri http://127.0.0.1:PORT`, or
    `MLFLOW_TRACKING_URI` exported without the rest of the env file) then reaches the
    authenticated server as one that found the stack itself does. The credentials only
    ever go to the server the env file names; credentials already in `environ` win, and
    `TIPSV2_STACK=off` leaves the stack out.
    """
    env = os.environ if environ is None else environ
    path = env_file(Path(home).resolve() if home else tipsv2_home(env))
    if not _stack_enabled(env) or not path.is_file():
        return ()
    try:
        values = read_env_file(path)
    except OSError:  # another user's stack, or a file being replaced: as if absent
        return ()
    return tuple(_stack_credentials(tracking_uri, values, env))


def _load(
    keys: tuple[str, ...], values: Mapping[str, str], environ: MutableMapping[str, str]
) -> list[str]:
    loaded = []
    for key in keys:
        if key in values and key not in environ:
            environ[key] = values[key]
            loaded.append(key)
    return loaded


def configure(
    home: Path | None = None, environ: MutableMapping[str, str] | None = None
) -> Settings:
    """Loads the healthy parts of the local stack into `environ`, else the embedded defaults.

    Idempotent: a second call finds the variables set and changes nothing (it then reports
    them as "environment"). `environ` defaults to `os.environ` (tests pass a dict).
    """
    env = os.environ if environ is None else environ
    home = Path(home).resolve() if home else tipsv2_home(env)
    loaded: list[str] = []
    explicit_storage = "AWS_ENDPOINT_URL" in env or "TIPSV2_STORAGE_ROOT" in env
    explicit_tracking = "MLFLOW_TRACKING_URI" in env

    values: dict[str, str] = {}
    path = env_file(home)
    if _stack_enabled(env) and path.is_file():
        values = read_env_file(path)
    # Probe only what the environment leaves open: each probe is a loopback round trip.
    s3_up = (
        not explicit_storage
        and "AWS_ENDPOINT_URL" in values
        and is_healthy(s3_health_url(values["AWS_ENDPOINT_URL"]))
    )
    mlflow_up = (
        not explicit_tracking
        and "MLFLOW_TRACKING_URI" in values
        and is_healthy(mlflow_health_url(values["MLFLOW_TRACKING_URI"]))
    )

    storage: Literal["stack", "embedded", "environment"]
    if explicit_storage:
        storage = "environment"
    elif s3_up:
        storage = "stack"
        loaded += _load(S3_KEYS, values, env)
    else:
        storage = "embedded"
    storage_root = env.get("TIPSV2_STORAGE_ROOT") or str(home / "storage")

    tracking: Literal["stack", "embedded", "environment"]
    if explicit_tracking:
        tracking = "environment"
        # The stack's own URL set by hand still needs the stack's credentials.
        loaded += _stack_credentials(env["MLFLOW_TRACKING_URI"], values, env)
    elif mlflow_up:
        tracking = "stack"
        loaded += _load(("MLFLOW_TRACKING_URI",), values, env)
        loaded += _stack_credentials(env["MLFLOW_TRACKING_URI"], values, env)
    else:
        tracking = "embedded"
        home.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
        loaded.append("MLFLOW_TRACKING_URI")
    return Settings(
        home=home,
        storage=storage,
        tracking=tracking,
        storage_root=storage_root,
        tracking_uri=env["MLFLOW_TRACKING_URI"],
        loaded=tuple(loaded),
    )


def disable_telemetry(
    environ: MutableMapping[str, str] | None = None, extra: Mapping[str, str] | None = None
) -> MutableMapping[str, str]:
    """Sets `TELEMETRY_OFF` (and `extra`) in `environ` (default `os.environ`) wherever the
    variable is not set already, so a user's explicit choice still wins; returns it."""
    env = os.environ if environ is None else environ
    for key, value in {**TELEMETRY_OFF, **(extra or {})}.items():
        env.setdefault(key, value)
    return env
