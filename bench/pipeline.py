"""What KFP local orchestration costs: `tipsv2 run --smoke` vs the same steps called directly.

Two contenders run the smoke-size pipeline (pipelines/cli/pipeline.py SMOKE over the DAG's
defaults) from scratch, each in a fresh process with a fresh $TIPSV2_HOME (embedded SQLite
MLflow and local storage; no stack is looked at):

- kfp.local: the real `tipsv2 run --smoke --no-cache --json --quiet`: pipelines/dag.py on
  kfp.local's SubprocessRunner, one Python subprocess per task. Per-step times come from
  its JSON summary (task start to end as the runner logs them, spawn and imports included).
- direct: one Python process that calls the same `components.steps` functions in the DAG's
  order with the DAG's arguments (`direct_pipeline` below), timing each call.

They alternate (A, B, A, B, ...) so the machine's noise hits both; the ratio of their
median wall times is the orchestration's overhead. The overhead is then split into the
CLI's own start-up (import, compile, summary), the runner's gaps between tasks, and the
per-task cost inside the steps (a new interpreter, imports, KFP's executor, Ray started
again by each training step), using the time the step functions report about themselves.

    .venv/bin/python bench/pipeline.py [--quick] [--reps N] [--full]

--full runs the sizes of `make run` (the embedded defaults) instead of --smoke's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TIPSV2 = str(Path(sys.executable).with_name("tipsv2"))
TIMEOUT_S = 1200


# ---------------------------------------------------------------------------------------
# contender B: the steps called directly (runs in its own process, see --direct)


def direct_pipeline(params: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """The DAG of pipelines/dag.py as plain calls, in the order kfp.local runs it, with the
    arguments its components pass. Returns the per-step times and the outcome."""
    from components.settings import configure, disable_telemetry

    # What `run_local` does before the first task: telemetry off, settings chosen once,
    # an absolute home (steps call configure() again and must land on the same one).
    disable_telemetry()
    settings = configure()
    os.environ["TIPSV2_HOME"] = str(settings.home)
    os.environ["TIPSV2_IMAGE"] = "local"  # what the DAG sets on every local task

    from components import steps
    from components.tokenizer import build_tokenizer

    p = dict(params)
    run_id = f"tipsv2-direct-{time.strftime('%Y-%m-%d-%H-%M-%S')}"  # ~PIPELINE_JOB_ID
    times: list[dict[str, Any]] = []

    @contextmanager
    def step(name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        times.append({"step": name, "seconds": time.perf_counter() - t0})

    def folder(name: str) -> Path:
        path = out / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    dataset = str(out / "prepare-data" / "dataset")
    state, error = "SUCCEEDED", ""
    result: dict[str, Any] = {}
    try:
        with step("preflight"):
            steps.check_promotion_rules(p["promotion"])
            steps.check_validation_config(p["validation"])
            students = steps.plan_students(p["recipe"], p["student_variants"])
        with step("prepare-data"):
            folder("prepare-data")
            steps.prepare_dataset(
                dataset,
                p["sources"],
                synth_images=p["synth_images"],
                image_size=p["image_size"],
                workers=p["workers"],
            )
        with step("validate-data"), tempfile.TemporaryDirectory() as tmp:
            check = steps.validate_dataset(dataset, tmp, p["validation"])
            shutil.copyfile(check.pop("report"), folder("validate-data") / "report")
        if not check["passed"]:
            with step("stop-on-invalid-data"):
                steps.stop_pipeline(check["summary"])
        with step("version-data"):
            version = steps.data_version(dataset)
        tok = folder("build-tokenizer") / "tokenizer"
        with step("build-tokenizer"):
            build_tokenizer(dataset, str(tok), vocab_size=p["tokenizer_vocab"])
        train_args = {
            "recipe": p["recipe"],
            "batch_size": p["batch_size"],
            "overrides": p["train_overrides"],
            "workers": p["workers"],
            "cpu_limit": p["train_cpu"],
            "gpus": p["gpus"],
            "experiment": p["experiment"],
        }
        eval_args = {
            "tasks": p["eval_tasks"],
            "limit": p["eval_limit"],
            "image_size": p["eval_image_size"],
            "eval_size": p["eval_image_size"],
            "pipeline_run_id": run_id,
            "experiment": p["experiment"],
        }
        teacher_dir = str(folder("pretrain") / "model")
        ray: dict[str, float] = {}  # Ray's start-up per training kind (the last student's)
        with step("pretrain"):
            teacher = steps.train_model(
                "pretrain",
                teacher_dir,
                dataset,
                str(tok / "tokenizer.model"),
                version=version,
                steps=p["pretrain_steps"],
                **train_args,
            )
        ray["pretrain"] = teacher["ray_startup_s"]
        pool = []  # (name, model dir, metrics) in the DAG's order: teacher first
        with step("evaluate-teacher"):
            doc = steps.evaluate_model(
                teacher_dir,
                dataset,
                str(folder("evaluate") / "report"),
                role="teacher",
                version=teacher["data_version"],
                **eval_args,
            )
        pool.append((f"pretrain/{teacher['variant']}", teacher_dir, doc["metrics"]))
        for i, variant in enumerate(students):
            loop = f"for-loop-iteration-{i}"
            student_dir = str(folder(f"{loop}/distill") / "model")
            with step("distill"):
                student = steps.train_model(
                    "distill",
                    student_dir,
                    dataset,
                    str(tok / "tokenizer.model"),
                    version=teacher["data_version"],
                    steps=p["distill_steps"],
                    teacher=os.path.join(teacher_dir, "final"),
                    student_variant=variant,
                    **train_args,
                )
            with step("evaluate-student"):
                doc = steps.evaluate_model(
                    student_dir,
                    dataset,
                    str(folder(f"{loop}/evaluate-2") / "report"),
                    role="student",
                    version=student["data_version"],
                    **eval_args,
                )
            ray["distill"] = student["ray_startup_s"]
            pool.append((f"distill/{student['variant']}", student_dir, doc["metrics"]))
        candidate = str(folder("select-candidate") / "candidate")
        with step("select-candidate"):
            candidates = [
                {"name": n, "model_dir": d, "metrics": {k: float(v) for k, v in m.items()}}
                for n, d, m in pool
            ]
            best = steps.select_candidate(candidates, p["primary_metric"])
            steps.copy_model(best["model_dir"], candidate)
        onnx = str(folder("export-onnx") / "onnx_model")
        with step("export-onnx"):
            exported = steps.export_model(candidate, onnx, [p["export_image_size"]])
        with step("register-model"):
            reg = steps.register_model(
                onnx,
                p["model_name"],
                best["metrics"],
                version=version,
                pipeline_run_id=run_id,
                experiment=p["experiment"],
            )
        with step("gate-decision"):
            gate = steps.gate_decision(
                p["model_name"], reg["version"], best["primary_metric"], p["promotion"]
            )
        action = "refused"
        if gate["passed"]:
            with step("promote-model"):
                action = steps.promote_model(
                    p["model_name"], reg["version"], best["primary_metric"], p["promotion"]
                )["action"]
        result = {
            "candidate": best["name"],
            "registered_version": reg["version"],
            "promotion": action,
            "parity_max_abs_diff": exported["max_abs_diff"],
            "ray_startup_s": ray,
        }
    except BaseException as e:
        state, error = "FAILED", f"{type(e).__name__}: {e}"
        raise
    finally:
        # The DAG's exit handler: the parent run gets the final state whatever happened.
        with step("finish-run"):
            steps.finish_pipeline_run(run_id, state, error, experiment=p["experiment"])
        result |= {"status": state, "error": error or None, "steps": times}
        (out / "direct.json").write_text(json.dumps(result, indent=2))
    return result


# ---------------------------------------------------------------------------------------
# running the contenders


def fresh_env(home: Path) -> dict[str, str]:
    """The embedded defaults in a home of its own: nothing MLflow or S3 from the caller's
    environment, the stack's env file ignored (as tests/test_pipeline.py's e2e test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    return env | {"TIPSV2_HOME": str(home), "TIPSV2_STACK": "off", "TIPSV2_STORAGE_ROOT": ""}


def _display_names(steps: list[dict[str, Any]]) -> dict[str, str]:
    """{`evaluate-2`: `evaluate-student`}: the summary shows `task (display name)`."""
    out = {}
    for s in steps:
        if m := re.fullmatch(r"(\S+) \((.+)\)", s["step"]):
            out[m.group(1)] = m.group(2)
    return out


def _inner_seconds(run_dir: Path, names: Mapping[str, str]) -> dict[str, float]:
    """The time each KFP task's steps.py function measured itself (where it reports one):
    the step's time less this is the task's spawn, imports and executor plumbing."""
    out: dict[str, float] = {}
    for path in sorted(run_dir.rglob("executor_output.json")):
        task = path.parent.name
        doc = json.loads(path.read_text())
        for art in (doc.get("artifacts") or {}).values():
            for a in art.get("artifacts") or []:
                meta = a.get("metadata") or {}
                if isinstance(meta.get("seconds"), int | float):
                    out[names.get(task, task)] = float(meta["seconds"])
    return out


def _ray_startup(run_dir: Path) -> dict[str, float]:
    out = {}
    for path in sorted(run_dir.rglob("executor_output.json")):
        arts = (json.loads(path.read_text()).get("artifacts") or {}).get("model") or {}
        for a in arts.get("artifacts") or []:
            meta = a.get("metadata") or {}
            if "ray_startup_s" in meta:
                out[str(meta.get("kind"))] = float(meta["ray_startup_s"])
    return out


def run_kfp(home: Path, smoke: bool = True) -> dict[str, Any]:
    """Contender A: the real CLI in its own process; wall time from spawn to exit."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [TIPSV2, "run", *(["--smoke"] if smoke else []), "--no-cache", "--json", "--quiet"],
        env=fresh_env(home),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    wall = time.perf_counter() - t0
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"tipsv2 run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads(lines[-1])
    ran = [s for s in summary["steps"] if s["status"] == "SUCCESS"]
    names = _display_names(ran)
    steps = [{"step": names.get(s["step"].split(" ")[0], s["step"]), "seconds": s["seconds"]}
             for s in ran]  # fmt: skip
    run_dir = Path(summary["run_dir"])
    return {
        "wall_s": wall,
        "pipeline_s": summary["wall_s"],  # the runner's pipeline() call alone
        "steps": steps,
        "inner_s": _inner_seconds(run_dir, names),
        "ray_startup_s": _ray_startup(run_dir),
        "promotion": (summary.get("promotion") or {}).get("action"),
    }


def run_direct(home: Path, params: Mapping[str, Any]) -> dict[str, Any]:
    """Contender B: `direct_pipeline` in a fresh interpreter (this file with --direct), so
    start-up and imports are paid once, as a single process calling the steps would."""
    spec = home / "params.json"
    spec.write_text(json.dumps(params))
    out = home / "direct"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--direct", str(spec), str(out)],
        env=fresh_env(home),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"direct run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    doc = json.loads((out / "direct.json").read_text())
    return {
        "wall_s": wall,
        "steps": doc["steps"],
        "ray_startup_s": doc["ray_startup_s"],
        "promotion": doc["promotion"],
    }


def run_params(smoke: bool = True) -> dict[str, Any]:
    """The arguments `tipsv2 run [--smoke]` passes: the DAG's defaults (with SMOKE on top),
    integers as integers (the spec's defaults are JSON numbers, floats; KFP casts them to
    the components' annotations, so the direct calls must get ints too)."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    from pipelines.cli.pipeline import SMOKE, pipeline_parameters
    from pipelines.dag import build_pipeline

    kinds = build_pipeline().pipeline_spec.root.input_definitions.parameters
    integer = pipeline_spec_pb2.ParameterType.NUMBER_INTEGER
    params = pipeline_parameters() | (SMOKE if smoke else {})
    return {k: int(v) if kinds[k].parameter_type == integer else v for k, v in params.items()}


# ---------------------------------------------------------------------------------------
# report


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _per_step(runs: list[dict[str, Any]], key: str = "steps") -> dict[str, float]:
    """Median seconds per step over the runs (a step repeated in a run is summed)."""
    seen: dict[str, list[float]] = {}
    for r in runs:
        totals: dict[str, float] = {}
        for s in r[key]:
            totals[s["step"]] = totals.get(s["step"], 0.0) + float(s["seconds"])
        for k, v in totals.items():
            seen.setdefault(k, []).append(v)
    return {k: _med(v) for k, v in seen.items()}


def report(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> tuple[list[dict], dict]:
    wall_a, wall_b = _med([r["wall_s"] for r in a]), _med([r["wall_s"] for r in b])
    step_a, step_b = _per_step(a), _per_step(b)
    inner: dict[str, list[float]] = {}
    for r in a:
        for k, v in r["inner_s"].items():
            inner.setdefault(k, []).append(v)
    rows = []
    for name in list(step_b) + [k for k in step_a if k not in step_b]:
        sa, sb = step_a.get(name), step_b.get(name)
        rows.append({
            "step": name,
            "kfp_s": sa,
            "kfp_inner_s": _med(inner[name]) if name in inner else None,
            "direct_s": sb,
            "overhead_s": None if sa is None or sb is None else sa - sb,
        })  # fmt: skip
    sum_a, sum_b = sum(step_a.values()), sum(step_b.values())
    pipeline_a = _med([r["pipeline_s"] for r in a])
    breakdown = {
        # tipsv2's own process: imports, compiling the DAG, reading outputs, the summary
        "kfp_cli_startup_and_summary_s": wall_a - pipeline_a,
        # the runner between tasks: resolving inputs, conditions, loop bookkeeping
        "kfp_runner_gaps_s": pipeline_a - sum_a,
        # inside the tasks: a new interpreter, imports, executor input/output, Ray again
        "kfp_in_task_overhead_s": sum_a - sum_b,
        "direct_startup_and_exit_s": wall_b - sum_b,
        "kfp_ray_startup_s": {k: _med([r["ray_startup_s"].get(k, 0.0) for r in a])
                              for k in ("pretrain", "distill")},
        "direct_ray_startup_s": {k: _med([r["ray_startup_s"].get(k, 0.0) for r in b])
                                 for k in ("pretrain", "distill")},
    }  # fmt: skip
    summary = {
        "kfp_wall_s": wall_a,
        "direct_wall_s": wall_b,
        "ratio": wall_a / wall_b,
        "overhead_s": wall_a - wall_b,
        "kfp_steps_sum_s": sum_a,
        "direct_steps_sum_s": sum_b,
        "kfp_pipeline_s": pipeline_a,
        "breakdown": breakdown,
    }
    return rows, summary


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def print_report(rows: list[dict], s: dict, reps: int) -> None:
    print(f"\n{'step':<18} {'kfp s':>7} {'in fn':>7} {'direct':>7} {'extra':>7}")
    for r in rows:
        cells = [r["kfp_s"], r["kfp_inner_s"], r["direct_s"], r["overhead_s"]]
        print(f"{r['step']:<18} " + " ".join(f"{_f(c):>7}" for c in cells))
    sum_a, sum_b = s["kfp_steps_sum_s"], s["direct_steps_sum_s"]
    print(f"{'sum of steps':<18} {sum_a:7.1f} {'':>7} {sum_b:7.1f} {sum_a - sum_b:7.1f}")
    print(
        f"\nmedian wall over {reps} rep(s): kfp.local {s['kfp_wall_s']:.1f} s, "
        f"direct {s['direct_wall_s']:.1f} s -> ratio {s['ratio']:.2f}x, "
        f"overhead {s['overhead_s']:.1f} s"
    )
    bd = s["breakdown"]
    print(
        f"  kfp: CLI start-up, compile, summary {bd['kfp_cli_startup_and_summary_s']:.1f} s; "
        f"runner gaps between tasks {bd['kfp_runner_gaps_s']:.1f} s; inside tasks "
        f"(spawn, imports, executor, Ray) {bd['kfp_in_task_overhead_s']:.1f} s"
    )
    print(f"  direct: interpreter start-up and exit {bd['direct_startup_and_exit_s']:.1f} s")
    print(
        f"  Ray start-up (pretrain, distill): kfp {bd['kfp_ray_startup_s']}, "
        f"direct {bd['direct_ray_startup_s']}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one rep of each")
    ap.add_argument("--reps", type=int, default=None, help="runs of each contender (2)")
    ap.add_argument("--keep", action="store_true", help="keep the runs' homes")
    ap.add_argument("--full", action="store_true", help="the sizes of `make run`, not --smoke")
    ap.add_argument("--direct", nargs=2, metavar=("PARAMS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.direct:
        # Contender B's own process: nothing imported beyond what the steps need.
        direct_pipeline(json.loads(Path(args.direct[0]).read_text()), Path(args.direct[1]))
        return 0

    from bench._measure import write_results

    reps = args.reps or (1 if args.quick else 2)
    params = run_params(smoke=not args.full)
    runs: dict[str, list[dict[str, Any]]] = {"kfp.local": [], "direct": []}
    contenders = {
        "kfp.local": lambda h: run_kfp(h, smoke=not args.full),
        "direct": lambda h: run_direct(h, params),
    }
    # No warm-up: each run is a minute or two; alternating spreads drift over both.
    for rep in range(reps):
        for name, fn in contenders.items():
            home = Path(tempfile.mkdtemp(prefix=f"bench-pipeline-{name}-"))
            try:
                r = fn(home)
            finally:
                if not args.keep:
                    shutil.rmtree(home, ignore_errors=True)
            runs[name].append(r)
            print(f"rep {rep + 1}/{reps} {name:<9} {r['wall_s']:6.1f} s "
                  f"(promotion: {r['promotion']})", flush=True)  # fmt: skip
    rows, summary = report(runs["kfp.local"], runs["direct"])
    print_report(rows, summary, reps)
    path = write_results(
        ("pipeline_full" if args.full else "pipeline") + ("_quick" if args.quick else ""),
        rows,
        {"reps": reps, "params": params, **summary, "runs": runs},
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
