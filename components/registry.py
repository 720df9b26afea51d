"""Registering ONNX exports in the MLflow model registry, and resolving `models:/` URIs back.

What one registration writes (docs/architecture.md, "Metric names" and "Lineage"):

- one MLflow run in the experiment `tipsv2` (step `register`; a child of the pipeline's
  parent run when a `pipeline_run_id` is known, as components.tracking lays runs out)
  carrying the lineage tags
  `git_sha`, `data_version`, `pipeline_run_id`, `eval_data_version`, the native
  `checkpoint_uri`, the eval metrics and `export/onnx/max_abs_diff` as metrics;
- in that run, one logged model (`name="model"`):
  - the **ONNX flavour of the image encoder** (`mlflow.onnx.log_model`), with a tensor
    signature `images [-1, 3, -1, -1] float32 -> cls1, cls2 [-1, D], patch_tokens
    [-1, -1, -1, D]` (batch, height and width are dynamic, as in the graph) and an input
    example;
  - the **whole export directory** under `export/` of the same logged model: every graph
    (values, text, fp16 / int8 copies), `export_meta.json` with its parity numbers, the
    tokenizer, `COMPLETE`;
- a new version of the registered model NAME, with the same lineage, the metrics and the
  parity verdict as version tags, and the alias `challenger`.

Why the ONNX flavour plus artifacts rather than a pyfunc wrapper: the flavour loads with
MLflow and ONNX Runtime alone, so `mlflow.pyfunc.load_model("models:/NAME@champion")`
embeds images in any environment, and `mlflow models serve` can serve it, without this
repository's code on the path (a `PythonModel` wrapper would need `tipsv2_core` and torch
importable wherever it is loaded). Its `predict(images)` returns the raw encoder outputs
`{"cls1", "cls2", "patch_tokens"}`; the CLI's embeddings are `cls / max(|cls|, 1e-3)`. The
`export/` folder keeps the exact bytes the parity check measured, with the values and text
graphs our own loaders need (`tipsv2 embed --checkpoint models:/NAME@champion`, or any
export reader given `resolve_model_uri`'s directory); the price is a second copy of the
fp32 image encoder in the artifact store.

Metric names: MLflow rejects `@` in metric and tag keys, so `eval/retrieval/ds/i2t_r@1` is
stored as `..._r:1` (`components.tracking.sanitize_key`, the rule of every run too;
`readable_key` reverses it, and the gate's lookups also find the older `..._r_at_1`).

`resolve_model_uri` turns `models:/NAME@ALIAS` or `models:/NAME/VERSION` into a local export
directory: the version's `export/` artifacts are downloaded once into
`$TIPSV2_HOME/cache/models/<logged model id>/` (written atomically; a logged model's
artifacts never change, so the id is a safe cache key) and loaded like any export.

MLflow is imported inside the functions (about 1.3 s), so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.settings import tipsv2_home
from components.tracking.client import (
    client_for,
    find_or_create_parent,
    get_or_create_experiment,
    resolve_tracking_uri,
)
from components.tracking.lineage import git_sha as code_git_sha
from components.tracking.scrub import sanitize_key
from components.tracking.tags import (
    DATA_VERSION_ENV,
    DEFAULT_EXPERIMENT,
    PARENT_TAG,
    PIPELINE_RUN_ID_ENV,
    TAG_CHECKPOINT,
    TAG_DATA_VERSION,
    TAG_EVAL_DATA_VERSION,
    TAG_EXPORT_FORMAT,
    TAG_GIT_SHA,
    TAG_KIND,
    TAG_PARITY_PASSED,
    TAG_PARITY_TOLERANCE,
    TAG_PIPELINE_RUN_ID,
    TAG_STEP,
    TAG_VARIANT,
    UNKNOWN,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

RECORD_FILE = "lineage.json"  # components.reproduce.record, an artifact of the run
LOGGED_MODEL_NAME = "model"
EXPORT_ARTIFACTS = "export"  # folder of the logged model that holds the export directory
CHAMPION = "champion"
CHALLENGER = "challenger"
MODELS_SCHEME = "models:/"

PARITY_METRIC = "export/onnx/max_abs_diff"
# Version tags with these prefixes are metrics (values written with repr: exact floats).
METRIC_PREFIXES = ("eval/", "export/", "train/")

_VERSION_RE = re.compile(r"^(?P<name>.+)/(?P<version>\d+)$")
MAX_TAG_VALUE = 5000  # registry tags are shorter than run tags (8000) in MLflow's stores


class RegistryError(ValueError):
    """A registry request that cannot be served: unknown model, version or alias, bad input.

    A ValueError, so the CLI reports it as a usage error (exit 2) like other bad input.
    """


@contextlib.contextmanager
def fluent_uris(tracking_uri: str) -> Iterator[None]:
    """Points MLflow's fluent API (`mlflow.onnx.log_model`, `register_model`) at one store.

    The fluent API only reads the process-global URIs, and `mlflow.set_tracking_uri` also
    writes `$MLFLOW_TRACKING_URI`. Both globals and both variables are put back afterwards,
    so a caller (a test using two stores, a pipeline with its own settings) is unaffected.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {k: os.environ.get(k) for k in names}
    saved = (
        getattr(tracking_utils, "_tracking_uri", None),
        getattr(registry_utils, "_registry_uri", None),
    )
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------------------
# what a version holds


@dataclass(frozen=True)
class VersionInfo:
    """One registered model version as the gate and the CLI see it.

    metrics: by MLflow key (see `components.tracking.sanitize_key`); eval_data_version /
    parity_passed / max_abs_diff: None where the version does not say.
    """

    name: str
    version: str
    aliases: tuple[str, ...]
    metrics: dict[str, float]
    tags: dict[str, str]
    eval_data_version: str | None
    parity_passed: bool | None
    max_abs_diff: float | None
    run_id: str | None
    model_id: str | None
    source: str
    created_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["aliases"] = list(self.aliases)
        doc["metrics"] = {k: _json_float(v) for k, v in self.metrics.items()}
        doc["max_abs_diff"] = _json_float(self.max_abs_diff)
        return doc


def _json_float(x: float | None) -> float | str | None:
    return x if x is None or math.isfinite(x) else str(x)  # JSON has no inf / nan


def _bool_tag(value: str | None) -> bool | None:
    return {"true": True, "false": False}.get((value or "").lower())


def _float_or_none(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _model_id(mv: ModelVersion) -> str | None:
    """The logged model behind a version (MLflow 3 sources are `models:/m-<id>`)."""
    mid = getattr(mv, "model_id", None)
    if mid:
        return mid
    source = mv.source or ""
    if source.startswith(MODELS_SCHEME + "m-"):
        return source.removeprefix(MODELS_SCHEME).split("/")[0]
    return None


def version_info(client: MlflowClient, name: str, version: str | int) -> VersionInfo:
    """The version's aliases, metrics (version tags, else its run's), lineage and parity."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException as e:
        raise RegistryError(f"model {name!r} has no version {version} ({e.error_code})") from None
    return _info(client, mv)


def _info(client: MlflowClient, mv: ModelVersion) -> VersionInfo:
    from mlflow.exceptions import MlflowException

    tags = dict(mv.tags or {})
    metrics: dict[str, float] = {}
    for k, v in tags.items():
        if k.startswith(METRIC_PREFIXES) and (x := _float_or_none(v)) is not None:
            metrics[k] = x
    if mv.run_id:
        # A version registered by other tooling may carry its metrics on the run only.
        with contextlib.suppress(MlflowException):
            for k, v in client.get_run(mv.run_id).data.metrics.items():
                metrics.setdefault(k, v)
    aliases = tuple(sorted(getattr(mv, "aliases", None) or ()))
    return VersionInfo(
        name=mv.name,
        version=str(mv.version),
        aliases=aliases,
        metrics=metrics,
        tags=tags,
        eval_data_version=tags.get(TAG_EVAL_DATA_VERSION) or None,
        parity_passed=_bool_tag(tags.get(TAG_PARITY_PASSED)),
        max_abs_diff=metrics.get(PARITY_METRIC),
        run_id=mv.run_id,
        model_id=_model_id(mv),
        source=mv.source,
        created_ms=mv.creation_timestamp,
    )


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version `alias` points at, or None (also None when the model does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(name).aliases or {}
    except MlflowException:
        return None
    v = aliases.get(alias)
    return None if v is None else str(v)


def list_versions(client: MlflowClient, name: str) -> list[VersionInfo]:
    """Every version of `name`, newest first."""
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"no registered model {name!r}") from None
    # search_model_versions leaves `aliases` empty; the registered model has them all.
    by_version: dict[str, list[str]] = {}
    for alias, v in (rm.aliases or {}).items():
        by_version.setdefault(str(v), []).append(alias)
    infos = []
    for mv in client.search_model_versions(f"name = '{_quote(name)}'"):
        info = _info(client, mv)
        aliases = tuple(sorted(set(info.aliases) | set(by_version.get(info.version, ()))))
        infos.append(replace(info, aliases=aliases))
    return sorted(infos, key=lambda v: -int(v.version))


def list_models(client: MlflowClient) -> list[dict[str, Any]]:
    """Registered models: name, aliases {alias: version}, latest version, description."""
    out = []
    for rm in client.search_registered_models(max_results=1000):
        latest = max((int(mv.version) for mv in rm.latest_versions or ()), default=None)
        out.append(
            {
                "name": rm.name,
                "aliases": {k: str(v) for k, v in sorted((rm.aliases or {}).items())},
                "latest_version": None if latest is None else str(latest),
                "description": rm.description or "",
                "updated_ms": rm.last_updated_timestamp,
            }
        )
    return sorted(out, key=lambda m: m["name"])


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


# ---------------------------------------------------------------------------------------
# registering an export


@dataclass(frozen=True)
class RegisteredVersion:
    """What `register_export` created; `uri` is `models:/NAME/VERSION`."""

    name: str
    version: str
    run_id: str
    model_id: str
    aliases: tuple[str, ...]
    tracking_uri: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"{MODELS_SCHEME}{self.name}/{self.version}"

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["aliases"] = list(self.aliases)
        doc["uri"] = self.uri
        return doc


def load_metrics_file(path: str | os.PathLike) -> tuple[dict[str, float], dict[str, str]]:
    """Metrics (and lineage, if any) from a JSON file.

    Accepts the flat `{name: number, "eval_data_version": ...}` that `tipsv2 eval
    --output` writes, or
    `{"metrics": {...}, "eval_data_version": ..., "data_version": ...}`. Returns
    (metrics, lineage) where lineage holds the version strings the file names.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RegistryError(f"{path}: cannot read metrics JSON ({e})") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{path}: expected a JSON object of metrics")
    lineage: dict[str, str] = {}
    for key in (TAG_EVAL_DATA_VERSION, TAG_DATA_VERSION):
        if doc.get(key):
            lineage[key] = str(doc[key])
    if isinstance(doc.get("metrics"), dict):
        doc = doc["metrics"]
    else:  # flat, as `tipsv2 eval --output` writes it: the versions beside the metrics
        doc = {k: v for k, v in doc.items() if k not in (TAG_EVAL_DATA_VERSION, TAG_DATA_VERSION)}
    metrics = {}
    for k, v in doc.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise RegistryError(f"{path}: metric {k!r} is not a number ({v!r})")
        metrics[str(k)] = float(v)
    return metrics, lineage


def _check_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """{mlflow key: value}; rejects non-finite values and names that collide once sanitised."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        value = float(value)
        if not math.isfinite(value):
            raise RegistryError(f"metric {name!r} is {value}: only finite values are registered")
        key = sanitize_key(name)
        if key in out:
            raise RegistryError(f"metrics {name!r} and another both map to the MLflow key {key!r}")
        out[key] = value
    return out


def _parity(meta: Mapping[str, Any]) -> tuple[float, bool, float | None]:
    """(max_abs_diff, passed, tolerance) of the export's fp32 parity (inf when unknown)."""
    parity = meta.get("parity") or {}
    diff = (meta.get("metrics") or {}).get(PARITY_METRIC, parity.get("max_abs_diff"))
    # export_meta.json writes null for a non-finite difference (JSON has no inf).
    value = math.inf if diff is None else float(diff)
    return value, parity.get("passed") is True, parity.get("tolerance")


def _image_signature(meta: Mapping[str, Any]) -> Any:
    """The image encoder's tensor signature, from the graph spec in export_meta.json.

    Built by hand: `infer_signature` would freeze height and width at the example's size,
    and MLflow would then reject every other image size at predict time.
    """
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    spec = meta["graphs"]["image_encoder"]

    def tensors(part: str) -> Schema:
        return Schema(
            [
                TensorSpec(
                    np.dtype(d["dtype"]),
                    tuple(s if isinstance(s, int) else -1 for s in d["shape"]),
                    n,
                )
                for n, d in spec[part].items()
            ]
        )

    return ModelSignature(inputs=tensors("inputs"), outputs=tensors("outputs"))


def _pip_requirements() -> list[str]:
    # Given explicitly: MLflow would otherwise load the model in a subprocess to infer them.
    from importlib.metadata import version

    return [f"onnx=={version('onnx')}", f"onnxruntime=={version('onnxruntime')}"]


def _lineage(
    meta: Mapping[str, Any],
    *,
    git_sha: str | None,
    data_version: str | None,
    pipeline_run_id: str | None,
    eval_data_version: str | None,
    checkpoint_uri: str | None,
) -> dict[str, str]:
    """Lineage tags: explicit values, else the export's record of its checkpoint, else env."""
    source = meta.get("source_meta") or {}
    return {
        # The commit of the code that trained the model, where the checkpoint recorded it.
        TAG_GIT_SHA: git_sha or source.get("git_sha") or meta.get("git_sha") or code_git_sha(),
        TAG_DATA_VERSION: data_version
        or source.get("data_version")
        or os.environ.get(DATA_VERSION_ENV, ""),
        TAG_PIPELINE_RUN_ID: pipeline_run_id or os.environ.get(PIPELINE_RUN_ID_ENV, ""),
        TAG_EVAL_DATA_VERSION: eval_data_version or "",
        TAG_CHECKPOINT: checkpoint_uri or meta.get("source_checkpoint") or "",
    }


def _lineage_record(
    meta: Mapping[str, Any], checkpoint_uri: str | None, eval_settings: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The reproduction record of the export's source checkpoint (None: not a native one)."""
    from components.reproduce.record import capture
    from components.tracking.lineage import git_dirty

    source = checkpoint_uri or str(meta.get("source_checkpoint") or "")
    if not source or "://" in source:
        return None
    # A checkpoint records its own dirty flag (tipsv2_core.provenance); for one written
    # before it did, the registering checkout's state stands in when it is the same commit.
    src_sha = (meta.get("source_meta") or {}).get("git_sha")
    dirty = git_dirty() if src_sha and src_sha == code_git_sha() else None
    return capture(source, eval_settings=eval_settings, git_dirty=dirty)


def _defined(tags: Mapping[str, str]) -> dict[str, str]:
    return {k: (v or UNKNOWN)[:MAX_TAG_VALUE] for k, v in tags.items()}


def register_export(
    export_dir: str | os.PathLike,
    name: str,
    metrics: Mapping[str, float],
    *,
    eval_data_version: str | None = None,
    data_version: str | None = None,
    pipeline_run_id: str | None = None,
    git_sha: str | None = None,
    checkpoint_uri: str | None = None,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    alias: str | None = CHALLENGER,
    tags: Mapping[str, str] | None = None,
    eval_settings: Mapping[str, Any] | None = None,
) -> RegisteredVersion:
    """Logs the export at `export_dir` in MLflow and registers it as a new version of `name`.

    metrics: eval metrics (`eval/<task>/<dataset>/<metric>`) of the checkpoint the export
    came from; the export's own parity numbers are added. eval_data_version: the version
    of the evaluation dataset those metrics were measured on; the promotion gate compares
    only versions measured on the same one. data_version / git_sha / checkpoint_uri default
    to what the export recorded of its checkpoint; pipeline_run_id / data_version also to
    `$TIPSV2_PIPELINE_RUN_ID` / `$TIPSV2_DATA_VERSION`. alias: moved to the new version
    (None: no alias). An export whose parity failed is still registered, with
    `parity_passed=false`, so the record exists; the gate refuses to promote it.
    eval_settings: how the metrics were measured (`tasks`, `limit`, `image_size`,
    `eval_size`), kept in the lineage record so that `tipsv2 reproduce` measures alike.

    The run also holds `lineage.json` (components.reproduce.record): the source
    checkpoint's resolved config, commit, dataset and final losses, captured now while
    the checkpoint is at hand, so that the registry entry alone suffices to re-run it.
    """
    import mlflow
    import onnx

    from tipsv2_core.export.runtime import read_meta

    export_dir = Path(export_dir)
    meta = read_meta(export_dir)  # raises on a missing or incomplete export
    image_file = (meta.get("files") or {}).get("fp32", {}).get("image_encoder")
    if not image_file:
        raise RegistryError(f"{export_dir}: the export has no fp32 image encoder to register")
    values = _check_metrics(metrics)
    max_abs_diff, parity_passed, tolerance = _parity(meta)
    # Finite parity numbers go in as metrics; a non-finite one only as the version tag.
    parity_metrics = {
        sanitize_key(k): float(v)
        for k, v in (meta.get("metrics") or {}).items()
        if v is not None and math.isfinite(float(v))
    }
    uri = resolve_tracking_uri(tracking_uri)
    client = client_for(uri)
    exp_id = get_or_create_experiment(client, experiment, uri)
    lineage = _defined(
        _lineage(
            meta,
            git_sha=git_sha,
            data_version=data_version,
            pipeline_run_id=pipeline_run_id,
            eval_data_version=eval_data_version,
            checkpoint_uri=checkpoint_uri,
        )
    )
    described = {
        TAG_VARIANT: str(meta.get("variant", UNKNOWN)),
        TAG_PARITY_PASSED: str(parity_passed).lower(),
        TAG_PARITY_TOLERANCE: repr(tolerance) if tolerance is not None else UNKNOWN,
        TAG_EXPORT_FORMAT: f"{meta.get('format')}/{meta.get('format_version')}",
    }
    extra = {sanitize_key(k): str(v)[:MAX_TAG_VALUE] for k, v in (tags or {}).items()}
    run_tags = {**extra, **lineage, **described, TAG_STEP: "register", "registered_model": name}
    if lineage[TAG_PIPELINE_RUN_ID] != UNKNOWN:
        # A step of a pipeline run: a child of its parent run, as the tracking adapter
        # lays runs out, so the registration shows beside train and eval.
        parent = find_or_create_parent(client, exp_id, lineage[TAG_PIPELINE_RUN_ID])
        run_tags |= {PARENT_TAG: parent, TAG_KIND: "step"}
    image_size = min(meta.get("image_sizes") or [meta.get("patch_size", 14) * 2])

    import numpy as np

    example = np.zeros((1, 3, image_size, image_size), np.float32)
    graph = onnx.load(str(export_dir / image_file))  # external data, if any, is read too
    large = graph.ByteSize() > 1_500_000_000  # protobuf's 2 GB limit, with room to spare

    with fluent_uris(uri):
        nested = mlflow.active_run() is not None
        with mlflow.start_run(
            experiment_id=exp_id, run_name=f"register/{name}", tags=run_tags, nested=nested
        ) as run:
            mlflow.log_params(
                {
                    "variant": meta.get("variant"),
                    "opset": meta.get("opset"),
                    "image_sizes": ",".join(str(s) for s in meta.get("image_sizes") or ()),
                    "precisions": ",".join(sorted(meta.get("files") or ())),
                }
            )
            info = mlflow.onnx.log_model(
                graph,
                name=LOGGED_MODEL_NAME,
                signature=_image_signature(meta),
                input_example=example,
                pip_requirements=_pip_requirements(),
                onnx_execution_providers=["CPUExecutionProvider"],
                save_as_external_data=large,
                metadata={"tipsv2": {"variant": meta.get("variant"), "graph": "image_encoder"}},
                tags={**lineage, TAG_VARIANT: described[TAG_VARIANT]},
            )
            client.log_model_artifacts(info.model_id, str(export_dir), EXPORT_ARTIFACTS)
            record = _lineage_record(meta, checkpoint_uri, eval_settings)
            if record is not None:
                mlflow.log_dict(record, RECORD_FILE)
            # Logged with the model id: the values show on the run and on the logged model.
            mlflow.log_metrics({**values, **parity_metrics}, model_id=info.model_id)
            version_tags = {
                **extra,
                **lineage,
                **described,
                PARITY_METRIC: repr(max_abs_diff),
                **{k: repr(v) for k, v in values.items()},
            }
            mv = mlflow.register_model(info.model_uri, name, tags=version_tags)
    version = str(mv.version)
    client.update_model_version(
        name,
        version,
        description=(
            f"{meta.get('variant')} ONNX export; eval data {lineage[TAG_EVAL_DATA_VERSION]}; "
            f"parity {'passed' if parity_passed else 'FAILED'} "
            f"(max |onnx - torch| = {max_abs_diff:.3g})"
        ),
    )
    aliases: tuple[str, ...] = ()
    if alias:
        client.set_registered_model_alias(name, alias, version)
        aliases = (alias,)
    return RegisteredVersion(
        name=name,
        version=version,
        run_id=run.info.run_id,
        model_id=info.model_id,
        aliases=aliases,
        tracking_uri=uri,
        tags=version_tags,
    )


# ---------------------------------------------------------------------------------------
# models:/ URIs -> local export directories


@dataclass(frozen=True)
class ModelRef:
    """A parsed `models:/` URI: a name with an alias or a version, or a logged model id."""

    name: str | None = None
    alias: str | None = None
    version: str | None = None
    model_id: str | None = None


def is_model_uri(value: str | os.PathLike) -> bool:
    """True for `models:/…` URIs (registry references rather than paths)."""
    return str(value).startswith(MODELS_SCHEME)


def parse_model_uri(uri: str) -> ModelRef:
    """`models:/NAME@ALIAS`, `models:/NAME/VERSION` or `models:/m-<id>` (a logged model)."""
    if not is_model_uri(uri):
        raise RegistryError(f"{uri!r} is not a models:/ URI")
    rest = uri.removeprefix(MODELS_SCHEME).strip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if name and alias:
            return ModelRef(name=name, alias=alias)
    elif m := _VERSION_RE.match(rest):
        return ModelRef(name=m["name"], version=m["version"])
    elif rest.startswith("m-") and "/" not in rest:
        return ModelRef(model_id=rest)
    raise RegistryError(
        f"{uri!r}: expected models:/NAME@ALIAS, models:/NAME/VERSION or models:/m-<id>"
    )


def _model_version(client: MlflowClient, ref: ModelRef, uri: str) -> ModelVersion:
    """The registry entry `ref` (a parsed models:/NAME@ALIAS or /VERSION) names;
    RegistryError naming `uri` when there is none."""
    from mlflow.exceptions import MlflowException

    assert ref.name is not None
    try:
        if ref.alias is not None:
            return client.get_model_version_by_alias(ref.name, ref.alias)
        return client.get_model_version(ref.name, str(ref.version))
    except MlflowException as e:
        raise RegistryError(f"{uri}: not found in the registry ({e.error_code})") from None


def native_checkpoint(uri: str, *, tracking_uri: str | None = None) -> Path:
    """The native checkpoint a registered version was exported from (its
    `checkpoint_uri`), for commands that need PyTorch weights; RegistryError when it is not
    recorded or not reachable from here (the registry itself keeps the ONNX export only)."""

    ref = parse_model_uri(uri)
    if ref.name is None:
        raise RegistryError(f"{uri}: name a registered model (models:/NAME@ALIAS or /VERSION)")
    mv = _model_version(client_for(tracking_uri), ref, uri)
    source = (mv.tags or {}).get(TAG_CHECKPOINT, "")
    path = Path(source.removeprefix("file://"))
    if not source or source == UNKNOWN or not (path / "meta.json").is_file():
        raise RegistryError(
            f"{uri}: its native checkpoint {source or '(not recorded)'} is not reachable here; "
            "the registry keeps the ONNX export only (`tipsv2 reproduce` re-trains it)"
        )
    return path


def cache_root(home: Path | None = None) -> Path:
    """Where downloaded exports are kept: `$TIPSV2_HOME/cache/models`."""
    return (home or tipsv2_home()) / "cache" / "models"


def resolve_model_uri(
    uri: str,
    *,
    tracking_uri: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The local export directory of a `models:/` URI, downloaded on first use.

    The alias is looked up on every call (it moves); the files are fetched once per
    logged model into `cache_dir` (default `$TIPSV2_HOME/cache/models`) and checked
    with the export reader (export_meta.json and COMPLETE present).
    """
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from tipsv2_core.atomic import commit_directory, temporary_sibling
    from tipsv2_core.export.runtime import read_meta

    ref = parse_model_uri(uri)
    client = client_for(tracking_uri)
    model_id = ref.model_id
    if model_id is None:
        mv = _model_version(client, ref, uri)
        model_id = _model_id(mv)
        if model_id is None:
            raise RegistryError(f"{uri}: version source {mv.source!r} is not a logged model")
    target = Path(cache_dir) if cache_dir else cache_root()
    final = target / model_id
    if (final / "COMPLETE").is_file():
        read_meta(final)
        return final
    try:
        location = client.get_logged_model(model_id).artifact_location
    except MlflowException as e:
        raise RegistryError(f"{uri}: logged model {model_id} not found ({e.error_code})") from None
    tmp = temporary_sibling(final)
    try:
        got = Path(
            # The client's server, not the process-wide default: an mlflow-artifacts: URI
            # is fetched through whichever tracking server MLflow is told to use.
            download_artifacts(
                artifact_uri=f"{location.rstrip('/')}/{EXPORT_ARTIFACTS}",
                dst_path=str(tmp),
                tracking_uri=client.tracking_uri,
            )
        )
        if not (got / "COMPLETE").is_file():
            raise RegistryError(f"{uri}: the registered artifacts hold no complete export")
        # Atomic: a concurrent reader sees no folder or a complete one, never a partial
        # one; if another process finished the same download first, its copy is kept.
        if not (final / "COMPLETE").is_file():
            commit_directory(got, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    read_meta(final)
    return final
