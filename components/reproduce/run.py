"""`reproduce`: a registered model version (or a registration run) trained again from its
lineage record, at its recorded commit, on its recorded data, and compared.

    record (lineage.json of the registration run)
      ─► commit: checked, checked out in a temporary git worktree
      ─► data: the recorded version restored (or re-synthesised), its hash checked
      ─► tokenizer: the registered export's, its hash checked against the record
      ─► [teacher first, for a distilled model] train the recorded config (Ray Train)
      ─► export and evaluate it as the original was  ─► compare  ─► report + MLflow run

Every command of the re-run executes the recorded commit's own code (its `components`
and `tipsv2_core`, through `python -m`/`-c` in the worktree), so the report compares
code against itself. Bit-exact weights are expected on CPU with one worker: same seed,
same data order, same code. They are not guaranteed across machines with other CPU
instruction sets or thread counts (float reductions change order), on GPUs
(non-deterministic kernels), or with several data-parallel workers (the record does not
keep the worker count; the re-run uses `workers`, default 1).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.reproduce.compare import (
    MetricRow,
    WeightDiff,
    compare_exports,
    compare_metrics,
    within,
)
from components.reproduce.data import restore_data, synth_arguments
from components.reproduce.record import RECORD_FILE, check_record
from components.reproduce.source import check_commit, find_repository, worktree

EVAL_KEYS = ("tasks", "limit", "image_size", "eval_size")  # evaluate_model's, as recorded
# Training metrics that measure the machine, not the model: never compared.
_TIMING_MARKS = ("per_s", "time", "seconds", "mfu")


@dataclass
class Original:
    """What the registry says of the model to reproduce."""

    ref: str  # as the user gave it
    run_id: str  # the registration run
    record: dict[str, Any]
    metrics: dict[str, float]  # the version's metrics (MLflow keys)
    export_dir: Path | None  # the registered export, downloaded
    experiment_id: str
    name: str | None = None
    version: str | None = None


@dataclass
class Report:
    """The reproduction report (also `report.json` and the MLflow run's contents)."""

    ref: str
    original_run_id: str
    git_sha: str
    data: dict[str, Any]
    weights: WeightDiff | None
    metrics: list[MetricRow]
    tolerance: float
    partial_steps: int | None
    passed: bool
    failures: list[str] = field(default_factory=list)
    out: str = ""
    run_id: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["metrics"] = [
            {"name": r.name, "original": r.original, "reproduced": r.reproduced, "delta": r.delta}
            for r in self.metrics
        ]
        return doc


def _is_timing(name: str) -> bool:
    leaf = name.rsplit("/", 1)[-1]
    return leaf.endswith("_s") or any(mark in leaf for mark in _TIMING_MARKS)


# ---------------------------------------------------------------------------------------
# the original


def load_original(ref: str, tracking_uri: str | None = None) -> Original:
    """The record, metrics and export of `models:/NAME/VERSION`, `models:/NAME@ALIAS` or
    a registration run id; ValueError naming what is missing."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from components.registry import (
        is_model_uri,
        parse_model_uri,
        resolve_model_uri,
        version_info,
    )
    from components.tracking import client_for

    client = client_for(tracking_uri)
    name = version = None
    export_dir = None
    if is_model_uri(ref):
        parsed = parse_model_uri(ref)
        if parsed.name is None:
            raise ValueError(f"{ref}: name a registered model (models:/NAME/VERSION or @ALIAS)")
        try:
            version = (
                client.get_model_version_by_alias(parsed.name, parsed.alias).version
                if parsed.alias
                else str(parsed.version)
            )
        except MlflowException as e:
            raise ValueError(f"{ref}: not found in the registry ({e.error_code})") from None
        name = parsed.name
        info = version_info(client, name, version)
        if not info.run_id:
            raise ValueError(f"{ref}: the version has no registration run to read lineage from")
        run_id, metrics = info.run_id, dict(info.metrics)
        export_dir = resolve_model_uri(f"models:/{name}/{version}", tracking_uri=tracking_uri)
    else:
        run_id = ref
        try:
            run = client.get_run(run_id)
        except MlflowException as e:
            raise ValueError(f"run {ref}: not found ({e.error_code})") from None
        metrics = dict(run.data.metrics)
    run = client.get_run(run_id)
    try:
        local = download_artifacts(
            run_id=run_id, artifact_path=RECORD_FILE, tracking_uri=client.tracking_uri
        )
    except (MlflowException, OSError):
        raise ValueError(
            f"{ref}: run {run_id} holds no {RECORD_FILE} (registered before lineage records "
            "were kept, or not a registration run)"
        ) from None
    record = check_record(json.loads(Path(local).read_text()), f"{ref} {RECORD_FILE}")
    if export_dir is None:  # a run id: the version it registered, if any
        versions = client.search_model_versions(f"run_id = '{run_id}'")
        if versions:
            name, version = versions[0].name, str(versions[0].version)
            uri = f"models:/{name}/{version}"
            export_dir = resolve_model_uri(uri, tracking_uri=tracking_uri)
    return Original(ref, run_id, record, metrics, export_dir, run.info.experiment_id, name, version)


# ---------------------------------------------------------------------------------------
# running the recorded code


class _Worktree:
    """Runs Python in the recorded commit's checkout, with its code first on the path."""

    def __init__(self, src: Path, log: Callable[[str], None]) -> None:
        self.src = src
        self.log = log
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p
        )

    def python(self, *args: str, what: str) -> None:
        self.log(f"{what} ...")
        t0 = time.time()
        done = subprocess.run(
            [sys.executable, *args], cwd=self.src, env=self.env, text=True,
            capture_output=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"{what} failed at the recorded commit:\n{tail}")
        self.log(f"{what} done in {time.time() - t0:.1f} s")

    def call(self, func: str, kwargs: Mapping[str, Any], *, what: str) -> None:
        """`module.function(**kwargs)` in the worktree (kwargs as JSON)."""
        module, name = func.rsplit(".", 1)
        code = f"import json, sys\nfrom {module} import {name}\n{name}(**json.loads(sys.argv[1]))\n"
        self.python("-c", code, json.dumps(dict(kwargs)), what=what)


def _stages_for(config: dict[str, Any], steps: int) -> dict[str, Any]:
    """The config cut to its first `steps` steps (a quick partial check)."""
    left, stages = steps, []
    for stage in config["stages"]:
        if left <= 0:
            break
        stages.append({**stage, "steps": min(int(stage["steps"]), left)})
        left -= int(stage["steps"])
    return {**config, "stages": stages}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _train(
    wt: _Worktree,
    record: Mapping[str, Any],
    data: Path,
    tokenizer: Path,
    out: Path,
    steps: int | None,
    workers: int,
    teacher: Path | None = None,
) -> Path:
    """Trains the record's config into `out` on Ray Train with the recorded workers and
    torch threads (float sums depend on both); returns the run directory. `workers`:
    where the record does not say."""
    config = json.loads(json.dumps(record["config"]))
    config["data"]["path"] = str(data)
    config["data"]["tokenizer"] = str(tokenizer)
    if teacher is not None:
        config["distill"]["teacher"] = str(teacher / "final")
    if steps:
        config = _stages_for(config, steps)
    out.mkdir(parents=True, exist_ok=True)
    execution = record.get("execution") or {}
    threads = execution.get("torch_threads")
    if not threads:
        wt.log("the record has no thread count: floats may differ in the last bits")
    spec = {
        "workers": int(execution.get("workers") or workers),
        "cpus_per_worker": float(threads or 1),
    }
    code = (
        "import json, sys\n"
        "from components.ray_train import RayTrainSpec, train_on_ray\n"
        "from tipsv2_core.config import from_dict, validate\n"
        "cfg, out, kind, spec = json.loads(sys.argv[1])\n"
        "train_on_ray(validate(from_dict(cfg)), out, kind, RayTrainSpec(**spec))\n"
    )
    what = f"{record['kind']} {record.get('variant') or ''}".strip()
    wt.python("-c", code, json.dumps([config, str(out), record["kind"], spec]), what=what)
    return out


def _final_metrics(run_dir: Path) -> dict[str, float]:
    from components.reproduce.record import _last_row

    return _last_row(run_dir / "metrics.jsonl")


# ---------------------------------------------------------------------------------------
# reproduce


def reproduce(
    ref: str,
    *,
    out: Path,
    tracking_uri: str | None = None,
    repo: str | None = None,
    data: str | None = None,
    steps: int | None = None,
    tolerance: float = 1e-6,
    workers: int = 1,
    allow_dirty: bool = False,
    track: bool = True,
    log: Callable[[str], None] = lambda _msg: None,
) -> Report:
    """Re-runs the training behind `ref` and compares it with the original (module doc).

    out: the reproduction's folder (data, runs, export, report.json). steps: stop after
    this many steps (a quick check: trains and evaluates, compares nothing against the
    final model). tolerance: the largest |difference| accepted in weights and metrics.
    """
    from components.tracking.scrub import sanitize_key

    t0 = time.time()
    original = load_original(ref, tracking_uri)
    record = original.record
    root = find_repository(repo)
    sha = check_commit(
        root, record.get("git_sha"), None if allow_dirty else record.get("git_dirty")
    )
    teacher_rec = record.get("teacher")
    if teacher_rec:
        check_commit(
            root, teacher_rec.get("git_sha"), None if allow_dirty else teacher_rec.get("git_dirty")
        )
    if original.export_dir is None:
        raise ValueError(f"{ref}: no registered export to take the tokenizer from")
    tokenizer = original.export_dir / "tokenizer.model"
    recorded_tok = record.get("tokenizer_sha256")
    if not tokenizer.is_file():
        raise ValueError(f"{ref}: the registered export has no tokenizer.model")
    if recorded_tok and _sha256(tokenizer) != recorded_tok:
        raise ValueError(
            f"{ref}: the export's tokenizer (sha256 {_sha256(tokenizer)[:12]}) is not the "
            f"one the model was trained with ({recorded_tok[:12]})"
        )
    out.mkdir(parents=True, exist_ok=True)
    log(f"reproducing {ref}: commit {sha[:12]}, data {record['data_version']}, into {out}")
    with worktree(root, sha) as src:
        wt = _Worktree(src, log)

        def synthesize(target: Path, generator: Mapping[str, Any]) -> None:
            wt.call(
                "tipsv2_core.data.synth_dataset.write_synthetic_dataset",
                {"out": str(target), "workers": 1, "progress": False, **synth_arguments(generator)},
                what="re-synthesising the dataset",
            )

        data_dir, how = restore_data(record["dataset"], out, data, synthesize)
        log(f"data: {data_dir} ({how}), version {record['data_version']} checked")
        teacher_dir = None
        if teacher_rec:
            if teacher_rec.get("git_sha") != record.get("git_sha"):
                raise ValueError(
                    f"{ref}: the teacher was trained at another commit "
                    f"({str(teacher_rec.get('git_sha'))[:12]}); reproduce it on its own first"
                )
            t_data, _ = restore_data(teacher_rec["dataset"], out, data, synthesize)
            teacher_dir = _train(wt, teacher_rec, t_data, tokenizer, out / "teacher", None, workers)
        run_dir = _train(
            wt, record, data_dir, tokenizer, out / "model", steps, workers, teacher_dir
        )
        export_dir = out / "export"
        sizes = []
        meta = json.loads((original.export_dir / "export_meta.json").read_text())
        sizes = [int(s) for s in meta.get("image_sizes") or [224]]
        weights = None
        if not steps:
            wt.call(
                "components.steps.release.export_model",
                {"model_dir": str(run_dir), "out": str(export_dir), "image_sizes": sizes},
                what="export (ONNX, parity)",
            )
            weights = compare_exports(original.export_dir, export_dir)
        eval_metrics: dict[str, float] = {}
        settings = record.get("eval")
        if settings:
            result = out / "eval.json"
            code = (
                "import json, sys\n"
                "from components.steps.evaluate import evaluate_model\n"
                "kw = json.loads(sys.argv[1])\n"
                "args = kw.pop('model_dir'), kw.pop('dataset'), kw.pop('report')\n"
                "doc = evaluate_model(*args, **kw)\n"
                f"open({str(result)!r}, 'w').write(json.dumps(doc['metrics']))\n"
            )
            recorded = {k: settings[k] for k in EVAL_KEYS if k in settings}
            kwargs = {
                "model_dir": str(run_dir), "dataset": str(data_dir),
                "report": str(out / "eval-report.html"), "role": "reproduction",
                "track": False, **recorded,
            }  # fmt: skip
            wt.python("-c", code, json.dumps(kwargs), what="evaluate")
            eval_metrics = {
                sanitize_key(k): float(v) for k, v in json.loads(result.read_text()).items()
            }
    reproduced_train = _final_metrics(run_dir)
    original_train = record.get("final_metrics") or {}
    rows: list[MetricRow] = []
    failures: list[str] = []
    if not steps:
        train_rows = compare_metrics(
            {k: v for k, v in original_train.items() if not _is_timing(k)},
            {k: v for k, v in reproduced_train.items() if not _is_timing(k)},
        )
        orig_eval = {k: v for k, v in original.metrics.items() if k.startswith("eval/")}
        eval_rows = compare_metrics(orig_eval, eval_metrics) if settings else []
        rows = train_rows + eval_rows
        failures += [
            f"metric {n} differs by more than {tolerance:g}" for n in within(rows, tolerance)
        ]
        if weights is not None:
            if weights.mismatched:
                failures.append(
                    f"the models differ in structure: {', '.join(weights.mismatched[:5])}"
                )
            elif not weights.identical and not weights.max_abs_diff <= tolerance:
                failures.append(
                    f"weights differ: max |reproduced - original| = {weights.max_abs_diff:.3g} "
                    f"> tolerance {tolerance:g}"
                )
        if not settings:
            log("the record has no evaluation settings: eval metrics are not re-measured")
    else:
        rows = compare_metrics({}, {k: v for k, v in reproduced_train.items() if not _is_timing(k)})
    report = Report(
        ref=ref,
        original_run_id=original.run_id,
        git_sha=sha,
        data={"path": str(data_dir), "how": how, "version": record["data_version"]},
        weights=weights,
        metrics=rows,
        tolerance=tolerance,
        partial_steps=steps or None,
        passed=not failures,
        failures=failures,
        out=str(out),
        seconds=round(time.time() - t0, 1),
    )
    if track:
        report.run_id = _log_report(report, original, tracking_uri)
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    return report


def _log_report(report: Report, original: Original, tracking_uri: str | None) -> str:
    """The reproduction as an MLflow run beside the original, linked to it by tags."""
    from components.tracking import client_for
    from components.tracking.scrub import sanitize_key
    from components.tracking.tags import TAG_DATA_VERSION, TAG_GIT_SHA, TAG_STEP

    client = client_for(tracking_uri)
    label = f"{original.name}-v{original.version}" if original.name else original.run_id[:12]
    tags = {
        TAG_STEP: "reproduce",
        TAG_GIT_SHA: report.git_sha,
        TAG_DATA_VERSION: str(report.data["version"]),
        "reproduces_run_id": original.run_id,
        "reproduces": original.ref,
        "reproduction_passed": str(report.passed).lower(),
        "mlflow.note.content": (
            f"Reproduction of {original.ref} (registration run {original.run_id}): "
            f"{'PASSED' if report.passed else 'FAILED'}"
        ),
    }
    run = client.create_run(original.experiment_id, run_name=f"reproduce-{label}", tags=tags)
    rid = run.info.run_id
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    metrics = [Metric("reproduce/passed", float(report.passed), now, 0)]
    if report.weights is not None:
        diff = report.weights.max_abs_diff
        metrics.append(
            Metric("reproduce/weights_max_abs_diff", diff if math.isfinite(diff) else 1e308, now, 0)
        )
    for row in report.metrics:
        if row.delta is not None and math.isfinite(row.delta):
            metrics.append(Metric(sanitize_key(f"reproduce/delta/{row.name}"), row.delta, now, 0))
    params = [Param("tolerance", repr(report.tolerance)), Param("data_source", report.data["how"])]
    if report.partial_steps:
        params.append(Param("steps", str(report.partial_steps)))
    client.log_batch(rid, metrics=metrics, params=params)
    client.log_dict(rid, report.to_json(), "reproduction.json")
    client.set_terminated(rid, "FINISHED")
    return rid
