"""`tipsv2 pipeline compile|submit` (Kubeflow) and `tipsv2 run` (the whole DAG, locally).

`tipsv2 run` executes `pipelines/dag.py` on kfp.local's SubprocessRunner: each step is a
subprocess of this interpreter (no containers, nothing installed or downloaded), storage
and tracking are the embedded defaults under $TIPSV2_HOME (or the local stack when it
runs), and outputs land in $TIPSV2_HOME/pipeline-root. Task outputs are cached there, so
a second run with the same inputs replays data, tokenizer and training from the cache.
The run's progress comes from the runner's own log, which is kept in full beside the
outputs; the summary at the end is read from the tasks' recorded outputs. With
`--containers` each step runs in its own container of `--image` instead (kfp.local's
DockerRunner, through the Docker API at $DOCKER_HOST), sharing this home.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from components.progress import PREFIX as PROGRESS_PREFIX

# What `--smoke` changes: tiny data, a few steps, small evaluation and export sizes; the
# whole DAG in a few minutes on 2 cores (CI's end-to-end check).
SMOKE = {
    "synth_images": 120,
    "pretrain_steps": 4,
    "distill_steps": 4,
    "batch_size": 8,
    "tokenizer_vocab": 300,
    "eval_limit": 8,
    "eval_image_size": 112,
    "export_image_size": 112,
    # A row every step: the progress lines and MLflow's charts get more than one point.
    "train_overrides": ["data.workers=0", "run.log_every=1"],
}
LOCAL_IMAGE = "local"  # SubprocessRunner ignores the image; lineage says "local"
# `tipsv2 run --containers`: where the image keeps its home (infra/docker/Dockerfile's
# TIPSV2_HOME), which every step's container shares with this machine's home.
CONTAINER_HOME = "/workspace/.tipsv2"
HEALTH_PATH = "/apis/v2beta1/healthz"
# On a cluster, training goes to infra/k8s's RayCluster (its head Service, Jobs API port).
CLUSTER_RAY_JOBS = "http://tipsv2-ray-head-svc:8265"
# infra/k8s/base/rbac.yaml's ServiceAccount for pipeline runs (pipelines.dag.SERVICE_ACCOUNT).
SERVICE_ACCOUNT = "tipsv2-pipeline"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="compile the Kubeflow pipeline, or submit it to a Kubeflow Pipelines server",
        description="The TIPSv2 DAG (pipelines/dag.py) as KFP v2 IR YAML, or as a run or a "
        "recurring run on a Kubeflow Pipelines server.",
    )
    psub = p.add_subparsers(dest="pipeline_command", metavar="COMMAND", required=True)
    comp = psub.add_parser("compile", help="write the pipeline's IR YAML")
    comp.add_argument("--out", default="pipeline.yaml", help="YAML to write (pipeline.yaml)")
    _image_arg(comp)
    comp.set_defaults(handler=run_compile)

    submit = psub.add_parser(
        "submit",
        help="start a run (or a recurring run with --schedule) on Kubeflow Pipelines",
        description="Compile the pipeline and submit it with kfp.Client. Credentials for "
        "S3 and MLflow come from Kubernetes Secrets in the cluster, never from --param.",
    )
    submit.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://HOST:8888")
    submit.add_argument("--experiment", default="tipsv2", help="KFP experiment (tipsv2)")
    submit.add_argument("--run-name", default=None, help="run (or recurring run) name")
    submit.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pipeline parameter; VALUE is JSON where it parses (lists, numbers), else text",
    )
    submit.add_argument(
        "--schedule",
        default=None,
        metavar="CRON",
        help="create a recurring run: 5-field cron (minute hour day month weekday) or "
        "KFP's 6-field form with seconds first",
    )
    submit.add_argument(
        "--ray-address",
        default=CLUSTER_RAY_JOBS,
        metavar="URL",
        help="Jobs API of the Ray cluster the training steps run on (default "
        f"{CLUSTER_RAY_JOBS}, infra/k8s's RayCluster; '' starts Ray inside each training "
        "step's pod)",
    )
    submit.add_argument("--namespace", default=None, help="KFP namespace (multi-user mode)")
    submit.add_argument(
        "--service-account",
        default=SERVICE_ACCOUNT,
        help=f"Kubernetes ServiceAccount of the run's pods (default {SERVICE_ACCOUNT}, "
        "infra/k8s/base/rbac.yaml; '' for the namespace's default)",
    )
    submit.add_argument("--timeout", type=float, default=10.0, help="reachability check (s)")
    _image_arg(submit)
    submit.set_defaults(handler=run_submit)

    run = sub.add_parser(
        "run",
        help="run the whole pipeline locally (kfp.local) and print a summary",
        description="Data -> validate -> version -> tokenizer -> pretrain -> distill -> "
        "evaluate -> export -> register -> promote, each step a subprocess on this machine "
        "(kfp.local SubprocessRunner), on the embedded defaults under $TIPSV2_HOME (or the "
        "local stack when it runs). Outputs and the runner's log go to "
        "$TIPSV2_HOME/pipeline-root; a re-run with the same inputs reuses cached steps.",
    )
    run.add_argument("--smoke", action="store_true", help="tiny data and a few steps (CI)")
    run.add_argument("--recipe", default=None, help="training recipe (default demo)")
    run.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="URI",
        help="data source to curate (repeatable); none: synthetic data",
    )
    run.add_argument("--synth-images", type=int, default=None, help="synthetic dataset size")
    run.add_argument(
        "--students", default=None, help="comma-separated student variants (default nano14)"
    )
    run.add_argument("--model-name", default=None, help="registered model (tipsv2-demo)")
    run.add_argument("--experiment", default=None, help="MLflow experiment (tipsv2)")
    run.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="any pipeline parameter"
    )
    run.add_argument("--pipeline-root", default=None, help="default $TIPSV2_HOME/pipeline-root")
    run.add_argument("--no-cache", action="store_true", help="run every step, reuse nothing")
    run.add_argument("--json", action="store_true", help="also print the summary as JSON")
    run.add_argument(
        "--containers",
        action="store_true",
        help="each step in its own container of --image (kfp.local DockerRunner), through "
        "the Docker API at $DOCKER_HOST (Docker, or podman's socket); the steps share this "
        "home, mounted at the image's own, and use its SQLite MLflow and local storage",
    )
    _image_arg(run)
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.set_defaults(handler=run_local)


def _image_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--image",
        default=None,
        help="container image of every step; pin it by digest (name@sha256:...) "
        "(default: $TIPSV2_IMAGE, else tipsv2:latest)",
    )


# ---------------------------------------------------------------------------------------
# parameters


def pipeline_parameters() -> dict[str, Any]:
    """The pipeline's parameters and their defaults, read from the compiled spec."""
    from pipelines.dag import build_pipeline

    spec = build_pipeline().pipeline_spec
    out: dict[str, Any] = {}
    for name, p in spec.root.input_definitions.parameters.items():
        from google.protobuf.json_format import MessageToDict

        out[name] = MessageToDict(p.default_value) if p.HasField("default_value") else None
    return out


def parse_params(pairs: Sequence[str], known: Mapping[str, Any]) -> dict[str, Any]:
    """`KEY=VALUE` pairs -> arguments. VALUE is JSON where it parses, else a string; a key
    the pipeline does not have is an error that lists the ones it has."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--param {pair!r}: expected KEY=VALUE")
        if key not in known:
            raise ValueError(
                f"--param {key}: no such pipeline parameter; known: {', '.join(known)}"
            )
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        default = known[key]
        if isinstance(default, list) and not isinstance(value, list):
            value = [v for v in str(raw).split(",") if v]  # a,b,c for list parameters
        if isinstance(default, str) and not isinstance(value, str):
            value = raw  # e.g. --param train_cpu=2 stays the string "2"
        out[key] = value
    return out


def cron_expression(text: str) -> str:
    """A 5-field cron (minute hour dom month dow) as KFP's 6-field form (seconds first)."""
    fields = text.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6 or not all(re.fullmatch(r"[\w*/,\-?#LW]+", f) for f in fields):
        raise ValueError(f"--schedule {text!r}: expected a 5- or 6-field cron expression")
    return " ".join(fields)


def _image(args: argparse.Namespace) -> str:
    from pipelines.dag import DEFAULT_IMAGE

    return args.image or os.environ.get("TIPSV2_IMAGE") or DEFAULT_IMAGE


# ---------------------------------------------------------------------------------------
# compile / submit


def run_compile(args: argparse.Namespace) -> int:
    from pipelines.dag import compile_pipeline

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compile_pipeline(str(out), _image(args))
    print(json.dumps({"pipeline": str(out.resolve()), "image": _image(args)}))
    return 0


def check_reachable(host: str, timeout: float = 10.0) -> None:
    """Raises ValueError naming the host unless its KFP health endpoint answers. kfp.Client
    itself retries an unreachable host for a long time with a confusing trace."""
    import urllib.error
    import urllib.request

    if not re.match(r"^https?://[^\s/]+", host):
        raise ValueError(f"--host {host!r}: expected http(s)://HOST[:PORT][/PATH]")
    url = host.rstrip("/") + HEALTH_PATH
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            return  # there, behind authentication: kfp.Client handles credentials
        raise ValueError(
            f"Kubeflow Pipelines at {host} answered {e.code} on {HEALTH_PATH}"
        ) from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise ValueError(f"cannot reach Kubeflow Pipelines at {host}: {reason}") from None


@contextlib.contextmanager
def _api_errors(host: str) -> Iterator[None]:
    """An HTTP error from the KFP API (kfp_server_api's ApiException, a dump of headers and
    body) as a ValueError naming the host, the status and the server's message."""
    from kfp_server_api.exceptions import ApiException

    try:
        yield
    except ApiException as e:
        message = ""
        with contextlib.suppress(TypeError, ValueError, AttributeError):
            doc = json.loads(e.body)  # grpc-gateway: {"error", "code", "message", ...}
            message = str(doc.get("message") or doc.get("error") or "")
        where = f"Kubeflow Pipelines at {host} answered {e.status} {e.reason}"
        raise ValueError(f"{where}: {message}" if message else where) from None


def run_submit(args: argparse.Namespace) -> int:
    import tempfile

    from pipelines.dag import compile_pipeline

    # --param wins over --ray-address: the most specific setting.
    arguments = {"ray_address": args.ray_address} | parse_params(args.param, pipeline_parameters())
    cron = cron_expression(args.schedule) if args.schedule else None
    check_reachable(args.host, args.timeout)
    import kfp

    # kfp.Client prints "Experiment details: <link>" lines: they go to stderr, so that
    # stdout is the one JSON line scripts read.
    with (
        contextlib.redirect_stdout(sys.stderr),
        _api_errors(args.host),
        tempfile.TemporaryDirectory(prefix="tipsv2-pipeline-") as tmp,
    ):
        client = kfp.Client(host=args.host, namespace=args.namespace or "kubeflow")
        package = compile_pipeline(str(Path(tmp) / "pipeline.yaml"), _image(args))
        name = args.run_name or f"tipsv2-{time.strftime('%Y%m%d-%H%M%S')}"
        if cron:
            exp = client.create_experiment(args.experiment, namespace=args.namespace)
            job = client.create_recurring_run(
                experiment_id=exp.experiment_id,
                job_name=name,
                cron_expression=cron,
                params=arguments,
                pipeline_package_path=package,
                service_account=args.service_account or None,
            )
            doc = {"recurring_run_id": job.recurring_run_id, "cron": cron}
        else:
            result = client.create_run_from_pipeline_package(
                package,
                arguments=arguments,
                run_name=name,
                experiment_name=args.experiment,
                namespace=args.namespace,
                service_account=args.service_account or None,
            )
            doc = {"run_id": result.run_id}
    print(json.dumps({**doc, "host": args.host, "experiment": args.experiment, "name": name}))
    return 0


# ---------------------------------------------------------------------------------------
# tipsv2 run: the runner's log, read line by line


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '?([\w.\-]+)'?")
_END = re.compile(r"Task '?([\w.\-]+)'? finished with status (\w+)")
_CACHED = re.compile(r"Task ([\w.\-]+) cache hit")
_SKIPPED = re.compile(r"Skipping (?:conditional )?task ([\w.\-]+)")


@dataclass
class StepRecord:
    name: str
    status: str = "running"  # running | SUCCESS | FAILURE | cached | skipped
    start: float | None = None
    end: float | None = None

    @property
    def seconds(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return self.end - self.start


@dataclass
class RunLog:
    """Stands in for stdout while the local runner works: keeps every line in `log`,
    records task starts, ends and cache hits with their times, and prints one progress
    line per event to `console`."""

    log: TextIO
    console: TextIO | None
    steps: list[StepRecord] = field(default_factory=list)
    names: Mapping[str, str] = field(default_factory=dict)  # KFP's task key -> ours
    _buf: str = ""

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self.log.write(text)
        self._buf += text
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        if not self.log.closed:
            self.log.flush()

    def _open(self, name: str) -> StepRecord:
        for rec in reversed(self.steps):
            if rec.name == name and rec.status == "running":
                return rec
        rec = StepRecord(name)
        self.steps.append(rec)
        return rec

    def _say(self, text: str) -> None:
        if self.console is not None:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.console, flush=True)

    def _line(self, line: str) -> None:
        now = time.time()
        if (at := line.find(PROGRESS_PREFIX)) >= 0:
            # A long step's progress (components.progress): already one every few seconds.
            self._say("  " + line[at + len(PROGRESS_PREFIX) :].strip())
        elif m := _START.search(line):
            rec = self._open(self._name(m.group(1)))
            rec.start = now
            self._say(f"{rec.name} ...")
        elif m := _END.search(line):
            rec = self._open(self._name(m.group(1)))
            rec.end, rec.status = now, m.group(2)
            took = f" in {rec.seconds:.1f} s" if rec.seconds is not None else ""
            self._say(f"{rec.name} {rec.status.lower()}{took}")
        elif m := _CACHED.search(line):
            self.steps.append(StepRecord(self._name(m.group(1)), "cached", now, now))
            self._say(f"{self._name(m.group(1))} cached")
        elif m := _SKIPPED.search(line):
            self.steps.append(StepRecord(self._name(m.group(1)), "skipped"))

    def _name(self, key: str) -> str:
        return self.names.get(key, key)


@contextlib.contextmanager
def _capture(run_log: RunLog) -> Iterator[None]:
    """Routes the runner's prints and its logging (cache hits are logged outside its own
    per-task handler) into `run_log`."""
    import logging

    root = logging.getLogger()
    handler = logging.StreamHandler(run_log)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))
    saved = sys.stdout, root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    sys.stdout = run_log  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout = saved[0]
        root.removeHandler(handler)
        root.setLevel(saved[1])


# ---------------------------------------------------------------------------------------
# tipsv2 run: what the tasks recorded


def _task_outputs(run_dir: Path) -> dict[str, dict[str, Any]]:
    """{task path (e.g. `for-loop-4-iteration-0/distill`): executor_output.json}."""
    out = {}
    for path in sorted(run_dir.rglob("executor_output.json")):
        with contextlib.suppress(OSError, json.JSONDecodeError):
            out[path.parent.relative_to(run_dir).as_posix()] = json.loads(path.read_text())
    return out


def _artifact(doc: Mapping[str, Any], name: str) -> dict[str, Any]:
    arts = (doc.get("artifacts") or {}).get(name, {}).get("artifacts") or [{}]
    return arts[0]


def _base(task_path: str) -> str:
    """`for-loop-4-iteration-0/evaluate-2` -> `evaluate`."""
    return re.sub(r"-\d+$", "", task_path.rsplit("/", 1)[-1])


def build_summary(run_dir: Path | None, steps: Sequence[StepRecord], error: str | None) -> dict:
    """The summary of a local run from its task outputs and its log's step records."""
    from components.settings import configure

    tasks = _task_outputs(run_dir) if run_dir is not None else {}
    summary: dict[str, Any] = {
        "status": "FAILED" if error else "SUCCEEDED",
        "error": error,
        "run_dir": str(run_dir) if run_dir else None,
        "data": None,
        "validation_report": None,
        "teacher": None,
        "students": [],
        "candidate": None,
        "onnx_model": None,
        "registered_version": None,
        "promotion": None,
        "reports": [],
        "tracking_uri": configure().tracking_uri,
    }
    gate: dict[str, Any] | None = None
    action = None
    for path, doc in tasks.items():
        base, params = _base(path), doc.get("parameterValues") or {}
        if base == "validate-data":
            art = _artifact(doc, "report")
            meta = art.get("metadata") or {}
            summary["data"] = {
                "num_samples": meta.get("num_samples"),
                "counts": meta.get("counts"),
                "passed": meta.get("passed"),
                "failures": meta.get("failures"),
            }
            summary["validation_report"] = art.get("uri")
        elif base == "evaluate":
            report = _artifact(doc, "report")
            meta = report.get("metadata") or {}
            entry = {
                "variant": meta.get("variant"),
                "metrics": _artifact(doc, "metrics").get("metadata") or {},
                "report": report.get("uri"),
            }
            summary["reports"].append(report.get("uri"))
            if meta.get("role") == "teacher":
                summary["teacher"] = entry
                # The controls scored beside the teacher (components.steps.evaluate_model).
                summary["random_init"] = meta.get("random_init")
                summary["colour_oracle"] = meta.get("colour_oracle")
            else:
                summary["students"].append(entry)
        elif base == "select-candidate":
            summary["candidate"] = params.get("name")
        elif base == "export-onnx":
            art = _artifact(doc, "onnx_model")
            summary["onnx_model"] = art.get("uri")
            summary["parity_max_abs_diff"] = (art.get("metadata") or {}).get("max_abs_diff")
        elif base == "register-model":
            summary["registered_version"] = params.get("Output")
        elif base == "gate-decision":
            gate = {"passed": params.get("Output")}
            gate["reasons"] = (_artifact(doc, "decision").get("metadata") or {}).get("reasons")
        elif base == "promote-model":
            action = params.get("Output")
        elif base == "finish-run":
            summary["mlflow_parent_run_id"] = params.get("Output")
    if gate is not None:
        # The gate decides; promote-model runs only when it passed, and says what it did.
        summary["promotion"] = {
            "passed": gate.get("passed"),
            "reasons": gate.get("reasons"),
            "action": action or ("refused" if not gate.get("passed") else None),
        }
    summary["steps"] = [
        {
            "step": s.name,
            "status": s.status,
            "seconds": None if s.seconds is None else round(s.seconds, 1),
        }
        for s in steps
    ]
    return summary


def html_view(uri: str | None) -> str | None:
    """A report as a `.html` file a browser renders: KFP names an HTML artifact's file after
    the output (`report`, no extension), which browsers show as source. A hard link (else a
    copy) named `<file>.html` sits beside it; other URIs are returned as they are."""
    import shutil

    if not uri or uri.endswith(".html") or "://" in uri or not Path(uri).is_file():
        return uri
    view = Path(uri + ".html")
    if not view.exists():
        try:
            os.link(uri, view)
        except OSError:
            shutil.copyfile(uri, view)
    return str(view)


def with_html_views(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary with every report path a `.html` view (html_view)."""
    summary["validation_report"] = html_view(summary.get("validation_report"))
    summary["reports"] = [html_view(r) for r in summary.get("reports") or []]
    for entry in [summary.get("teacher"), *(summary.get("students") or [])]:
        if entry:
            entry["report"] = html_view(entry.get("report"))
    return summary


def log_to_parent(summary: Mapping[str, Any], text: str) -> str | None:
    """The summary table and every report as artifacts of the pipeline's MLflow parent
    run; returns a warning instead of raising (the run itself is over and recorded)."""
    parent = summary.get("mlflow_parent_run_id")
    if not parent:
        return None
    named = [("validation.html", summary.get("validation_report"))]
    if summary.get("teacher"):
        named.append(("eval-teacher.html", summary["teacher"].get("report")))
    for student in summary.get("students") or []:
        named.append((f"eval-student-{student.get('variant')}.html", student.get("report")))
    try:
        import shutil
        import tempfile

        from components.tracking import client_for

        client = client_for(summary.get("tracking_uri"))
        client.log_text(parent, text + "\n", "summary.txt")
        with tempfile.TemporaryDirectory() as tmp:
            for name, report in named:
                if report and Path(report).is_file():
                    shutil.copyfile(report, Path(tmp) / name)
            client.log_artifacts(parent, tmp, "reports")
    except Exception as e:
        return f"could not log the summary to MLflow run {parent}: {e}"
    return None


def _mlflow_hint(tracking_uri: str | None) -> str | None:
    """How to look at the run: a tracking server is opened in a browser (the local stack's
    asks for the login its env file holds), a local store through `mlflow ui`."""
    if not tracking_uri:
        return None
    if not tracking_uri.startswith(("http://", "https://")):
        return f"mlflow ui --backend-store-uri {tracking_uri}"
    from components.settings import env_file, read_env_file, tipsv2_home

    path = env_file(tipsv2_home(os.environ))
    try:
        stack = read_env_file(path) if path.is_file() else {}
    except OSError:
        stack = {}
    if stack.get("MLFLOW_TRACKING_USERNAME") and stack.get("MLFLOW_TRACKING_URI") == tracking_uri:
        return f"{tracking_uri} (login: MLFLOW_TRACKING_USERNAME / _PASSWORD in {path})"
    return tracking_uri


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as plain-text tables for the terminal."""
    lines = [f"\ntipsv2 run: {summary['status']}"]
    if summary.get("error"):
        lines.append(f"  error: {summary['error']}")
    data = summary.get("data") or {}
    if data:
        counts = ", ".join(f"{k} {v}" for k, v in (data.get("counts") or {}).items())
        gate = "passed" if data.get("passed") else "FAILED"
        lines.append(f"\ndata: {data.get('num_samples')} samples ({counts}); validation {gate}")
        for failure in data.get("failures") or []:
            lines.append(f"  - {failure}")
    models = ([summary["teacher"]] if summary.get("teacher") else []) + list(
        summary.get("students") or []
    )
    if models:
        # Headline metrics only: per-class IoUs stay in the reports and in MLflow.
        names = sorted({k for m in models for k in m["metrics"] if "/iou/" not in k})
        roles = ["teacher"] + ["student"] * (len(models) - 1) if summary.get("teacher") else []
        roles = roles or ["student"] * len(models)
        header = ["metric"] + [f"{r} {m['variant']}" for r, m in zip(roles, models, strict=True)]
        rows = [[n] + [_fmt(m["metrics"].get(n)) for m in models] for n in names]
        if summary.get("random_init"):  # the floor: the teacher's variant, untrained
            header.append("random init")
            for row, n in zip(rows, names, strict=True):
                row.append(_fmt(summary["random_init"].get(n)))
        lines += ["", *_table(header, rows)]
        for name, value in (summary.get("colour_oracle") or {}).items():
            if name.endswith("/miou"):
                lines.append(
                    f"colour-only oracle (classes from pixel colour alone): {name} {_fmt(value)}"
                )
    promo = summary.get("promotion")
    if promo:
        lines.append(
            f"\npromotion: {promo.get('action') or '-'} "
            f"({summary.get('candidate') or '?'} registered as version "
            f"{summary.get('registered_version') or '-'})"
        )
        for reason in promo.get("reasons") or []:
            lines.append(f"  - {reason}")
    steps = summary.get("steps") or []
    if steps:
        rows = [
            [s["step"], s["status"].lower(), "-" if s["seconds"] is None else f"{s['seconds']:.1f}"]
            for s in steps
        ]
        lines += ["", *_table(["step", "status", "seconds"], rows)]
    lines.append("")
    where = [
        ("outputs", summary.get("run_dir")),
        ("validation report", summary.get("validation_report")),
        *[("eval report", r) for r in summary.get("reports") or []],
        ("onnx model", summary.get("onnx_model")),
        ("run log", summary.get("log")),
        ("mlflow", _mlflow_hint(summary.get("tracking_uri"))),
    ]
    lines += [f"{k + ':':<19}{v}" for k, v in where if v]
    return "\n".join(lines)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    from pipelines.cli.common import table

    return table(header, rows, max_cell=None, numbers_right=False, rule=True).splitlines()


# ---------------------------------------------------------------------------------------
# tipsv2 run


def run_arguments(args: argparse.Namespace, known: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline arguments of `tipsv2 run`: smoke sizes, then the named options, then
    --param (the most specific wins)."""
    out: dict[str, Any] = dict(SMOKE) if args.smoke else {}
    named = {
        "recipe": args.recipe,
        "synth_images": args.synth_images,
        "model_name": args.model_name,
        "experiment": args.experiment,
        "sources": list(args.source) or None,
        "student_variants": [s for s in args.students.split(",") if s] if args.students else None,
    }
    out |= {k: v for k, v in named.items() if v is not None}
    return out | parse_params(args.param, known)


def dag_task_names(pipeline: Any) -> dict[str, str]:
    """{`condition-4`: `gate-passed`, `evaluate-2`: `evaluate-student`}: the runner logs
    tasks and nested DAGs (branches, loops) by KFP's generated names; the summary shows
    the names the DAG gives them."""
    out = {}
    for comp in pipeline.pipeline_spec.components.values():
        for key, task in comp.dag.tasks.items():
            if task.task_info.name and task.task_info.name != key:
                out[key] = task.task_info.name
    return out


def container_runner(home: Path) -> Any:
    """kfp.local's DockerRunner for `tipsv2 run --containers`. KFP mounts the pipeline root
    at its own path; the home (MLflow's SQLite file, the local storage) goes to the image's
    TIPSV2_HOME, as KFP replaces a container's environment with the task's. The steps run
    as this user, so that the files they write here stay this user's."""
    from docker.types import Mount
    from kfp import local
    from kfp.local import docker_task_handler

    docker_task_handler.run_docker_container = _run_step_container
    return local.DockerRunner(
        mounts=[Mount(target=CONTAINER_HOME, source=str(home), type="bind")],
        user=f"{os.getuid()}:{os.getgid()}",
        # Ray's object store lives in /dev/shm; container engines give 64 MB by default.
        shm_size="1g",
    )


def _run_step_container(
    client: Any, image: str, command: list[str], volumes: dict, **run_args: Any
) -> int:
    """kfp.local's run_docker_container (kfp 2.17.3) without its race: it starts each
    container with auto_remove=True and then inspects it, so a step that ends in between
    is gone when looked at (Docker answers 404, podman 500, neither is handled) and the
    run fails. Here a container is removed after its logs and exit code are read."""
    container = client.containers.run(
        image=image, command=command, detach=True, volumes=volumes, **run_args
    )
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)


def run_local(args: argparse.Namespace) -> int:
    from components.settings import configure, disable_telemetry

    disable_telemetry()
    if args.containers:
        # The image's steps never use a local stack (TIPSV2_STACK=off in the Dockerfile):
        # they track and store under the shared home, and so does this summary.
        os.environ["TIPSV2_STACK"] = "off"
    settings = configure()  # the stack when up, else SQLite + local storage under the home
    # Steps are subprocesses: they inherit an absolute home and the settings chosen here.
    os.environ["TIPSV2_HOME"] = str(settings.home)
    arguments = run_arguments(args, pipeline_parameters())
    root = Path(args.pipeline_root or settings.home / "pipeline-root").resolve()
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"

    import warnings

    from kfp import local

    # Expected locally, once per task: limits and the image only apply on a cluster.
    warnings.filterwarnings("ignore", r"Task '.*': settings .* have no effect", UserWarning)
    warnings.filterwarnings("ignore", r"You may be attemping to run a task", RuntimeWarning)

    from pipelines.dag import PIPELINE_NAME, build_pipeline

    if args.containers:
        image = _image(args)
        runner: Any = container_runner(settings.home)
    else:
        image, runner = LOCAL_IMAGE, local.SubprocessRunner(use_venv=False)
    pipeline = build_pipeline(image)
    names = dag_task_names(pipeline)
    local.init(runner=runner, pipeline_root=str(root), enable_caching=not args.no_cache)
    console = None if args.quiet else sys.stderr
    if console is not None:
        print(
            f"tipsv2 run: storage {settings.storage}, tracking {settings.tracking_uri}; "
            f"outputs under {root}; log {log_path}",
            file=console,
        )
    before = set(root.glob(f"{PIPELINE_NAME}-*"))
    t0 = time.time()
    error = None
    with open(log_path, "w") as log:
        run_log = RunLog(log, console, names=names)
        with _capture(run_log):
            try:
                pipeline(**arguments)
            except RuntimeError as e:  # the runner's "finished with status FAILURE"
                error = _ANSI.sub("", str(e))
        run_log.write("\n")
    created = sorted(set(root.glob(f"{PIPELINE_NAME}-*")) - before)
    run_dir = created[-1] if created else None
    summary = with_html_views(build_summary(run_dir, run_log.steps, error))
    if error and summary["data"] and summary["data"].get("passed") is False:
        summary["error"] = "the dataset failed validation; nothing was trained"
    summary |= {"log": str(log_path), "wall_s": round(time.time() - t0, 1), "arguments": arguments}
    text = format_summary(summary)
    print(text)
    print(f"{'wall time:':<19}{summary['wall_s']} s")
    if warning := log_to_parent(summary, text):
        print(f"tipsv2 run: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, default=str))
    return 1 if error else 0
