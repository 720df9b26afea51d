"""The export step: ONNX graphs with their parity check, and what each precision costs in
accuracy on the evaluation set.

Parity (`tipsv2_core.export`) bounds the raw output differences; fp16 and int8 graphs are
not held to 1e-4, so for them the question is the task metric. `accuracy_deltas` runs the
same evaluators on the native model and on every exported precision and reports
`export/<precision>/<metric name>` = exported − native (e.g.
`export/int8/eval/zeroshot_seg/synth-val/miou`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ACCURACY_FILE = "accuracy.json"
DEFAULT_TASKS = ("zeroshot_seg", "retrieval")


def accuracy_deltas(
    checkpoint: str | os.PathLike,
    export_dir: str | os.PathLike,
    dataset: str | os.PathLike,
    *,
    tasks: Sequence[str] = DEFAULT_TASKS,
    limit: int | None = 50,
    image_size: int = 224,
    eval_size: int = 224,
) -> dict[str, float]:
    """Metrics of the native checkpoint and of each precision in `export_dir` on `dataset`
    (any layout `tipsv2 eval` reads), plus their differences; written to accuracy.json in
    the export directory (atomically) and returned."""
    from components.evaluation import evaluate_and_report
    from tipsv2_core.eval.readers.resolve import open_eval_views
    from tipsv2_core.export import load_onnx_model
    from tipsv2_core.export.runtime import read_meta
    from tipsv2_core.models.io import load_model
    from tipsv2_core.text import Tokenizer

    export_dir = Path(export_dir)
    tokenizer_file = export_dir / "tokenizer.model"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"{export_dir}: no tokenizer.model; export with --tokenizer")
    tokenizer = Tokenizer(tokenizer_file)
    views = open_eval_views(dataset, limit=limit)
    kw: dict[str, Any] = {"image_size": image_size, "eval_size": eval_size, "mode": "whole"}
    native = evaluate_and_report(
        load_model(checkpoint), tokenizer, views, tasks, where="eval", **kw
    )
    out = {f"native/{k}": v for k, v in native.items()}
    for precision in read_meta(export_dir)["files"]:
        model = load_onnx_model(export_dir, precision=precision)
        exported = evaluate_and_report(model, tokenizer, views, tasks, where="eval", **kw)
        out |= {f"export/{precision}/{k}": exported[k] - native[k] for k in native}
    tmp = export_dir / f".{ACCURACY_FILE}.tmp"
    tmp.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, export_dir / ACCURACY_FILE)
    return out
