"""One self-contained HTML report per evaluation (images inlined; opens without network).

Sections: lineage (checkpoint, data version, git SHA, config), metric tables, per-class
IoU, image | ground truth | prediction for a sample of images, PCA feature maps, the
training loss curves when the checkpoint's run directory has a metrics.jsonl, and the
learning curves (zero-shot mIoU and retrieval R@1 during training) when the run was
probed (`run.probe_every`). Every plot is also written as a PNG next to the HTML.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

STYLE = "body{font-family:sans-serif;margin:2em}td{padding:2px 12px}img{margin:2px}"
SECTIONS = (
    "Lineage",
    "Metrics",
    "Per-class IoU",
    "Predictions",
    "PCA features",
    "Training curves",
    "Learning curves",
)


@dataclass
class ReportData:
    title: str
    metrics: dict[str, float]
    lineage: dict[str, object] = field(default_factory=dict)
    # (key, image, ground-truth colours, prediction colours): one row each
    predictions: list[tuple[str, Image.Image, Image.Image, Image.Image]] = field(
        default_factory=list
    )
    pca: list[tuple[str, Image.Image]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    # (class name, RGB): the one palette of ground truth and prediction, shown as a legend
    legend: list[tuple[str, tuple[int, int, int]]] = field(default_factory=list)


def _png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure_png(fig) -> Image.Image:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _per_class(metrics: dict[str, float]) -> list[tuple[str, float]]:
    """(class, IoU), best first."""
    rows = [(k.split("/iou/")[-1], v) for k, v in metrics.items() if "/iou/" in k]
    return sorted(rows, key=lambda r: (-r[1], r[0]))


def _iou_chart(metrics: dict[str, float]) -> Image.Image | None:
    """Bars best first, each labelled with its value; the axis ends just past the best
    class (not at 1), so that small IoUs stay visible and zeros read as 0."""
    rows = _per_class(metrics)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, max(2.0, 0.3 * len(rows))))
    names, values = [r[0] for r in rows][::-1], [r[1] for r in rows][::-1]
    ax.barh(names, values, color="#4a7ab5")
    top = min(1.0, max(0.05, max(values) * 1.25))
    for y, v in enumerate(values):
        ax.text(v + top * 0.01, y, f"{v:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, top)
    ax.set_xlabel("IoU")
    img = _figure_png(fig)
    plt.close(fig)
    return img


def _curves(
    history: list[dict[str, float]], keys: list[str], prefix: str, ylabel: str = ""
) -> Image.Image | None:
    """One line per key over the steps, with markers, so that a run with a few logged
    points (a smoke run) still shows them."""
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for k in keys:
        pts = [(r["step"], r[k]) for r in history if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                label=k.removeprefix(prefix))  # fmt: skip
    ax.set_xlabel("step")
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    img = _figure_png(fig)
    plt.close(fig)
    return img


def _loss_chart(history: list[dict[str, float]]) -> Image.Image | None:
    keys = sorted(
        {k for row in history for k in row if k.endswith("_loss") and k.startswith("train/")}
    )
    return _curves(history, keys, "train/")


def _learning_chart(history: list[dict[str, float]]) -> Image.Image | None:
    """Zero-shot mIoU and retrieval R@1 on held-out data during training (probe/*)."""
    keys = sorted({k for row in history for k in row if k.startswith("probe/")})
    return _curves(history, keys, "probe/", "held-out score (fraction)")


def _legend(legend: list[tuple[str, tuple[int, int, int]]]) -> str:
    """The class colours of ground truth and prediction (one palette for both)."""
    items = "".join(
        f'<span style="display:inline-block;margin-right:1em"><span style="display:inline-block;'
        f"width:1em;height:1em;vertical-align:middle;border:1px solid #888;"
        f'background:rgb({r},{g},{b})"></span> {html.escape(name)}</span>'
        for name, (r, g, b) in legend
    )
    return f'<p class="legend">{items}</p>'


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>" for a, b in rows)
    return f"<table>{body}</table>"


def write_report(data: ReportData, out: str | os.PathLike) -> Path:
    """Writes `out` (HTML) and the plots as `<stem>_*.png` beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(data.title)}</h1>"]
    lineage = [(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in data.lineage.items()]
    parts += ["<h2>Lineage</h2>", _table(lineage)]
    headline = [(k, f"{v:.4f}") for k, v in sorted(data.metrics.items()) if "/iou/" not in k]
    parts += ["<h2>Metrics</h2>", _table(headline)]
    plots = {
        "per_class_iou": _iou_chart(data.metrics),
        "training_curves": _loss_chart(data.history),
        "learning_curves": _learning_chart(data.history),
    }
    for name, img in plots.items():
        if img is not None:
            img.save(out.with_name(f"{out.stem}_{name}.png"))
    parts.append("<h2>Per-class IoU</h2>")
    parts.append(
        f'<img src="{_png(plots["per_class_iou"])}">' if plots["per_class_iou"] else "<p>none</p>"
    )
    parts.append(_table([(k, f"{v:.4f}") for k, v in _per_class(data.metrics)]))
    parts.append("<h2>Predictions</h2><p>image | ground truth | prediction</p>")
    if data.legend:
        parts.append(_legend(data.legend))
    for key, *images in data.predictions:
        cells = "".join(f'<img src="{_png(im)}">' for im in images)
        parts.append(f"<div><b>{html.escape(key)}</b><br>{cells}</div>")
    parts.append("<h2>PCA features</h2>")
    parts += [
        f'<figure><img src="{_png(im)}"><figcaption>{html.escape(k)}</figcaption></figure>'
        for k, im in data.pca
    ]
    parts.append("<h2>Training curves</h2>")
    curves = plots["training_curves"]
    parts.append(
        f'<img src="{_png(curves)}">'
        if curves
        else "<p>no metrics.jsonl found for this checkpoint</p>"
    )
    parts.append("<h2>Learning curves</h2>")
    learning = plots["learning_curves"]
    parts.append(
        f'<img src="{_png(learning)}">'
        if learning
        else "<p>the run was not probed during training (set run.probe_every)</p>"
    )
    title = html.escape(data.title)
    head = f"<meta charset='utf-8'><title>{title}</title><style>{STYLE}</style>"
    doc = f"<!doctype html><html><head>{head}</head><body>{''.join(parts)}</body></html>"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(doc)
    os.replace(tmp, out)
    return out


def colour_labels(labels: np.ndarray, colours: np.ndarray, ignore: int = 255) -> Image.Image:
    """A label map as an RGB image; ignored pixels black."""
    rgb = colours[np.where(labels == ignore, 0, labels).astype(np.int64)]
    rgb[labels == ignore] = 0
    return Image.fromarray(rgb.astype(np.uint8))
