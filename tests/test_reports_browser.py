"""The HTML reports as a user sees them: each one opened in headless Chromium (Debian's
`chromium`), screenshotted, and the screenshot checked to show content, not a blank page.
Skipped, saying so, where Chromium is not installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt install chromium)"),
]


def screenshot(page: Path, out: Path, height: int = 2400) -> np.ndarray:
    """`page` rendered by headless Chromium at 1280 px wide, as an RGB array."""
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size=1280,{height}", f"--screenshot={out}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.is_file(), done.stderr[-2000:]
    return np.asarray(Image.open(out).convert("RGB"))


def assert_not_blank(pixels: np.ndarray) -> None:
    """Content: many pixels away from the background, in more than one colour."""
    background = np.median(pixels.reshape(-1, 3), axis=0)
    ink = np.abs(pixels.astype(int) - background).sum(axis=2) > 60
    assert ink.mean() > 0.01, f"only {ink.mean():.2%} of the page differs from its background"
    assert len(np.unique(pixels[ink].reshape(-1, 3) // 32, axis=0)) > 8  # figures, not text only


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from tipsv2_core.data.synth_dataset import write_synthetic_dataset

    out = tmp_path_factory.mktemp("browser") / "synth"
    return write_synthetic_dataset(out, 40, image_size=112, shard_size=40, progress=False)


def test_eval_report_opens_with_figures_legend_and_curves(dataset, nano, tmp_path):
    from components.evaluation import evaluate_and_report
    from components.tokenizer import build_tokenizer
    from tipsv2_core.eval.readers.resolve import open_eval_views
    from tipsv2_core.text import Tokenizer

    tok = build_tokenizer(dataset, tmp_path / "tok", vocab_size=300)
    views = open_eval_views(str(dataset), limit=4)
    history = [
        {"step": s, "train/loss": 9.0 - s, "train/clip_loss": 4.0 - s / 2} for s in (1, 2, 3)
    ]
    report = tmp_path / "report.html"
    evaluate_and_report(
        nano, Tokenizer(tok.model_uri), views, ["zeroshot_seg", "retrieval"], where="synth",
        image_size=112, eval_size=112, mode="whole", report=report, subject="teacher: nano14",
        history=history,
    )  # fmt: skip
    text = report.read_text()
    assert 'class="legend"' in text and "ignored" in text
    assert "Training curves" in text and "no metrics.jsonl" not in text
    assert_not_blank(screenshot(report, tmp_path / "report.png"))


def test_validation_report_opens_with_its_figures_as_tables(dataset, tmp_path):
    from components.validate import ValidationConfig, validate

    validate(str(dataset), ValidationConfig(min_samples=10), out=str(tmp_path / "v"))
    page = tmp_path / "v" / "validation.html"
    text = page.read_text()
    assert "<h2>Figures</h2><table>" in text and "<pre>" not in text
    assert_not_blank(screenshot(page, tmp_path / "validation.png", height=1600))
