"""What a run records about where it came from: the resolved config as flat params, the
code's git commit, and the machine it ran on (`system.*` params)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import re
import socket
from collections.abc import Mapping
from typing import Any

from components.tracking.tags import GIT_SHA_ENVS, UNKNOWN
from tipsv2_core.provenance import git_dirty
from tipsv2_core.provenance import git_sha as checkout_sha

__all__ = ["config_tree", "flatten_config", "git_dirty", "git_sha", "system_info"]


def flatten_config(cfg: Any) -> dict[str, Any]:
    """A (dataclass) config as `{"model.variant": "nano14", "stages.0.steps": 100, ...}`.

    Lists of sections are indexed (`stages.0.steps`); lists of plain values stay one value.
    """
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list | tuple) and any(isinstance(v, Mapping) for v in value):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)
        else:
            flat[prefix] = value

    walk("", cfg if isinstance(cfg, Mapping) else {"value": cfg})
    return flat


def config_tree(cfg: Any) -> Any:
    """A dataclass config as a plain dict; any other value as it is."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    return cfg


def git_sha(environ: Mapping[str, str] | None = None) -> str:
    """HEAD of the checkout this code runs from; else `$TIPSV2_GIT_SHA` / `$GIT_SHA`."""
    env = os.environ if environ is None else environ
    sha = checkout_sha()
    if sha and re.fullmatch(r"[0-9a-f]{40}", sha):
        return sha
    for name in GIT_SHA_ENVS:
        if env.get(name):
            return env[name]
    return UNKNOWN


def system_info(world_size: int | None = None) -> dict[str, str]:
    """Devices, world size, torch version and CPU count, as `system.*` params."""
    info = {
        "system.python": platform.python_version(),
        "system.platform": platform.platform(terse=True),
        "system.hostname": socket.gethostname(),
        "system.cpu_count": str(os.cpu_count() or 0),
        "system.world_size": str(
            world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
        ),
    }
    with contextlib.suppress(AttributeError, OSError):
        info["system.cpus_usable"] = str(len(os.sched_getaffinity(0)))
    try:
        import torch
    except ImportError:
        info["system.torch"] = "not installed"
        info["system.devices"] = "cpu"
        return info
    info["system.torch"] = torch.__version__
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["system.devices"] = ", ".join(names)
        info["system.device_count"] = str(len(names))
        info["system.cuda"] = str(torch.version.cuda)
    else:
        info["system.devices"] = "cpu"
        info["system.device_count"] = "0"
    return info
