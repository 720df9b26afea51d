"""Secrets never reach MLflow: `Scrubber` for keys, values and texts; and `sanitize_key` /
`readable_key`, the reversible spelling of metric names in MLflow keys."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_KEY = 250  # MLflow's longest metric / param / tag name (mlflow.utils.validation)
REDACTED = "***"
# A credential's *name*: one of these words as a component of the key (split at `_`, `.`,
# `-`, `/` or the ends). Whole words, not substrings, because `data.tokenizer` (a model
# path) and `text_max_tokens` are not secrets while `api_token` and `db_password` are.
SECRET_NAME_RE = re.compile(
    r"(?:^|[_.\-/])(?:SECRET|PASSWORD|PASSWD|PASS|TOKEN|ACCESS_KEY|API_KEY|PRIVATE_KEY|"
    r"CREDENTIALS?|AUTH)(?:$|[_.\-/])",
    re.IGNORECASE,
)
# Variables whose values are secrets whatever their length (S3 credentials come from these
# and must never be logged); other variables with a credential's name count
# from MIN_SECRET_LEN characters, so a `FOO_TOKEN=1` does not turn every "1" into ***.
SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
MIN_SECRET_LEN = 6
_URL_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s]+@")
# MLflow accepts alphanumerics, `_ - . / : ` and space in metric, param and tag names
# (mlflow.utils.validation); the metric name `i2t_r@1` would be rejected (and a rejected
# batch is lost), so keys are made valid here.
_INVALID_KEY_CHARS_RE = re.compile(r"[^/\w.\- :]")
# `@` is the one character our metric names use that MLflow refuses. It is spelt `:` in a
# key (`i2t_r@1` -> `i2t_r:1`): one character for one, so the name stays readable, and
# reversible because a `:` of the name itself is spelt `_` (no metric name of ours has one).
AT_IN_KEY = ":"
# How keys spelt `@` until now: registry versions made then carry `..._r_at_1`.
LEGACY_AT_IN_KEY = "_at_"


@dataclass(frozen=True)
class Scrubber:
    """Removes credentials from keys, values and texts before anything reaches MLflow."""

    secret_values: tuple[str, ...] = ()

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, extra: Iterable[str] = ()
    ) -> Scrubber:
        """Collects the secret values of `environ` (default `os.environ`) plus `extra`."""
        env = os.environ if environ is None else environ
        values = {env[k] for k in SECRET_ENV_VARS if env.get(k)}
        values |= {
            v for k, v in env.items() if SECRET_NAME_RE.search(k) and len(v) >= MIN_SECRET_LEN
        }
        values |= {v for v in extra if v}
        # Longest first, so that a secret containing another is replaced whole.
        return cls(tuple(sorted(values, key=lambda v: (-len(v), v))))

    @staticmethod
    def is_secret_name(name: str) -> bool:
        """True when `name` (an env variable, config key or tag key) names a credential."""
        return bool(SECRET_NAME_RE.search(name))

    def text(self, value: str) -> str:
        """`value` with every known secret value and every URL's `user:pass@` replaced."""
        for secret in self.secret_values:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return _URL_USERINFO_RE.sub(rf"\g<scheme>{REDACTED}@", value)

    def pair(self, key: str, value: Any) -> tuple[str, str]:
        """(key, value) as strings, safe to log: a credential's name hides its value."""
        key = self.text(str(key))
        if self.is_secret_name(key):
            return key, REDACTED
        return key, self.text(_as_text(value))

    def mapping(self, values: Mapping[str, Any]) -> dict[str, str]:
        """Every pair of `values` through `pair`."""
        return dict(self.pair(k, v) for k, v in values.items())

    def tree(self, obj: Any, name: str = "") -> Any:
        """A JSON-like tree (a resolved config) with secrets removed, for artifacts."""
        if name and self.is_secret_name(name):
            return REDACTED
        if isinstance(obj, Mapping):
            return {self.text(str(k)): self.tree(v, str(k)) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.tree(v) for v in obj]
        if isinstance(obj, str):
            return self.text(obj)
        return obj


def _as_text(value: Any) -> str:
    if isinstance(value, list | tuple) and all(not isinstance(v, dict | list) for v in value):
        # Same form as a `--set key=a,b` override, so a param can be pasted back.
        return ",".join(_as_text(v) for v in value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def sanitize_key(key: str) -> str:
    """A metric/param name MLflow accepts: `eval/retrieval/coco/i2t_r@1` -> `..._r:1`.

    `readable_key` turns the result back into the name, for every name without `:` that
    MLflow accepts once `@` is spelt `:` (all of ours).
    """
    key = key.replace(AT_IN_KEY, "_").replace("@", AT_IN_KEY)
    key = _INVALID_KEY_CHARS_RE.sub("_", key)
    key = re.sub(r"/{2,}", "/", key).strip("/")  # MLflow rejects names that are not
    key = "/".join(p for p in key.split("/") if p not in (".", ".."))  # normalised paths
    return key[:MAX_KEY] or "_"


def readable_key(key: str) -> str:
    """The metric name an MLflow key spells: `eval/retrieval/coco/i2t_r:1` ->
    `..._r@1`. What the CLI prints for a key."""
    return key.replace(AT_IN_KEY, "@")


def key_candidates(name: str) -> tuple[str, ...]:
    """The MLflow keys under which the metric `name` may be stored, newest spelling first:
    `i2t_r@1`, `i2t_r:1` or `i2t_r_at_1` -> (`i2t_r:1`, `i2t_r_at_1`). A gate rule names
    a metric once and still finds it on versions registered before `@` was spelt `:`."""
    readable = readable_key(name).replace(LEGACY_AT_IN_KEY, "@")
    spellings = (readable, readable.replace("@", LEGACY_AT_IN_KEY), name)
    return tuple(dict.fromkeys(sanitize_key(s) for s in spellings))


def lookup_metric(metrics: Mapping[str, float], name: str) -> float | None:
    """The value of the metric `name` in {MLflow key: value}, whichever spelling it was
    stored under (`key_candidates`); None when absent."""
    for key in key_candidates(name):
        if key in metrics:
            return metrics[key]
    return None
