"""Shared fixtures: small models with every parameter randomised, sample images; the
local stack's credentials for tests that talk to its MLflow server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tipsv2_core.models.tips import TIPSModel


@pytest.fixture(scope="session", autouse=True)
def _private_tipsv2_home(tmp_path_factory):
    """Embedded defaults (MLflow's SQLite file, storage) in a temporary home, never in the
    checkout. Tests that start a local stack give it their own home."""
    import os

    saved = os.environ.get("TIPSV2_HOME")
    os.environ["TIPSV2_HOME"] = str(tmp_path_factory.mktemp("tipsv2home"))
    yield
    if saved is None:
        os.environ.pop("TIPSV2_HOME", None)
    else:
        os.environ["TIPSV2_HOME"] = saved


@pytest.fixture(scope="module")
def s3_home(tmp_path_factory):
    """TIPSV2_HOME of a gateway-only local stack (the real S3 gateway on 127.0.0.1, with
    its own credentials), stopped after the module."""
    from components import stack

    home = tmp_path_factory.mktemp("s3home")
    assert stack.up(home, services=("s3",)) == {"s3": "started"}
    yield home
    stack.down(home)


@pytest.fixture(scope="module")
def s3_env(s3_home) -> dict[str, str]:
    """The gateway's env file (credentials, endpoint, region) and its TIPSV2_HOME."""
    from components.settings import read_env_file

    return read_env_file(s3_home / "stack" / "stack.env") | {"TIPSV2_HOME": str(s3_home)}


def stack_credentials(home: Path) -> dict[str, str]:
    """The local stack's MLflow credentials, from its env file: what a shell that sourced
    `stack.env` (or a command that found the stack) sends to the server."""
    from components.settings import MLFLOW_CREDENTIAL_KEYS, read_env_file

    env = read_env_file(home / "stack" / "stack.env")
    return {key: env[key] for key in MLFLOW_CREDENTIAL_KEYS}


@contextlib.contextmanager
def logged_in(home: Path) -> Iterator[dict[str, str]]:
    """The stack's MLflow credentials in `os.environ` while the block runs, for module
    fixtures whose in-process clients (and the subprocesses they start) use its server."""
    with pytest.MonkeyPatch.context() as mp:
        credentials = stack_credentials(home)
        for key, value in credentials.items():
            mp.setenv(key, value)
        yield credentials


def randomize_(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Gives every parameter (LayerScale, norms, position table, tokens…) random values.

    A freshly initialised model has ones and zeros in many places, which would hide bugs
    such as a LayerScale applied to the wrong branch or a swapped norm.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * scale
            if (
                name.endswith(("gamma", "norm1.weight", "norm2.weight", "norm.weight"))
                or "ln_" in name
            ):
                p.copy_(1.0 + 4 * noise)  # around 1, clearly not 1
            elif name.endswith("temperature"):
                p.fill_(0.01)
            else:
                p.copy_(noise * (4 if "token" in name or "pos_embed" in name else 1))
    return module


@pytest.fixture(scope="session")
def nano() -> TIPSModel:
    torch.manual_seed(0)
    return randomize_(TIPSModel("nano14")).eval()


@pytest.fixture(scope="session")
def image_files(tmp_path_factory) -> list[str]:
    """Three RGB images of different sizes and one palette image."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(120, 160), (224, 224), (300, 200)]):
        arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        p = d / f"img{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(str(p))
    pal = Image.fromarray((rng.random((64, 64)) * 8).astype(np.uint8), mode="P")
    pal.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    pal.save(d / "palette.png")
    paths.append(str(d / "palette.png"))
    return paths


@pytest.fixture(scope="session")
def caption_corpus() -> list[str]:
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    shapes = ["circle", "square", "star", "triangle", "heart", "cross"]
    places = ["on a striped background", "in the top left", "next to a small cat", "near a tree"]
    return [f"A {c} {s} {p}." for c in colours for s in shapes for p in places]
