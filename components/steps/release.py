"""The release stage of the pipeline: export the candidate to ONNX, register it, decide
at the promotion gate, promote it, and close the pipeline run's MLflow record."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tipsv2_core.uri import strip_file_scheme


def export_model(model_dir: str, out: str, image_sizes: Sequence[int] = (224,)) -> dict[str, Any]:
    """ONNX export of `model_dir/final` with its tokenizer; the parity check against
    PyTorch is part of the export (ParityError: nothing is written)."""
    from tipsv2_core.export import export_checkpoint

    t0 = time.perf_counter()
    run_dir = Path(strip_file_scheme(model_dir))
    result = export_checkpoint(
        str(run_dir / "final"),
        strip_file_scheme(out),
        image_sizes=list(image_sizes),
        tokenizer=str(run_dir / "tokenizer.model"),
    )
    return {
        "path": str(result.path),
        "variant": result.variant,
        "max_abs_diff": float(result.max_abs_diff),
        "files": result.files,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def register_model(
    export_dir: str,
    name: str,
    metrics: Mapping[str, float],
    *,
    version: str = "",
    pipeline_run_id: str | None = None,
    experiment: str = "tipsv2",
    eval_settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Registers the export as a new version of `name` (alias `challenger`) with its
    evaluation metrics, measured on the same dataset version it was trained on
    (`eval_settings`: how, as `evaluate_model` takes them; kept for `tipsv2 reproduce`)."""
    from components.registry import register_export
    from components.settings import configure

    t0 = time.perf_counter()
    configure()
    reg = register_export(
        strip_file_scheme(export_dir),
        name,
        dict(metrics),
        eval_data_version=version or None,
        data_version=version or None,
        pipeline_run_id=pipeline_run_id or None,
        experiment=experiment,
        eval_settings=eval_settings,
    )
    return {
        "name": reg.name,
        "version": reg.version,
        "run_id": reg.run_id,
        "tracking_uri": reg.tracking_uri,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _gate_config(primary_metric: str, rules: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The gate's config: the pipeline's promotion rules (components.promote.GateConfig
    fields) with the candidate's primary metric; None: the gate's defaults."""
    doc = dict(rules or {})
    if primary_metric:
        doc["primary_metric"] = primary_metric
    return doc or None


def check_promotion_rules(rules: Mapping[str, Any] | None) -> None:
    """Raises ValueError naming the problem when `rules` are not valid gate settings
    (unknown keys, bad margins): checked before any work, not after training."""
    from components.promote import GateConfig, PromotionError

    doc = _gate_config("", rules)
    if doc is None:
        return
    try:
        GateConfig.from_dict({"primary_metric": "checked-later", **doc})
    except (PromotionError, TypeError, ValueError) as e:
        raise ValueError(f"promotion rules {dict(rules or {})}: {e}") from None


def gate_decision(
    name: str, version: str, primary_metric: str = "", rules: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Whether `version` of `name` passes the promotion gate against the current champion
    (parity, primary metric, secondary margins, same eval data); reads only, so the DAG
    can branch on it. rules: GateConfig fields (min_improvement, secondary, ...)."""
    from components.promote import evaluate_gate, resolve_config
    from components.registry import CHAMPION, alias_version, version_info
    from components.settings import configure
    from components.tracking import client_for

    configure()
    client = client_for()
    challenger = version_info(client, name, version)
    champion_version = alias_version(client, name, CHAMPION)
    champion = None
    if champion_version is not None and champion_version != str(version):
        champion = version_info(client, name, champion_version)
    config = resolve_config(_gate_config(primary_metric, rules), challenger)
    gate = evaluate_gate(challenger, champion, config)
    return {
        "passed": gate.passed,
        "reasons": gate.reasons(),
        "champion": champion_version,
        "primary_metric": config.primary_metric,
    }


def promote_model(
    name: str, version: str, primary_metric: str = "", rules: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Moves `champion` to `version` if the gate passes (and records the decision)."""
    from components.promote import promote
    from components.settings import configure

    configure()
    decision = promote(name, version, _gate_config(primary_metric, rules))
    return {
        "action": decision.action,
        "champion_before": decision.champion_before,
        "champion_after": decision.champion_after,
        "reasons": list(decision.reasons),
    }


def finish_pipeline_run(
    pipeline_run_id: str,
    state: str,
    error: str = "",
    *,
    experiment: str = "tipsv2",
    run_name: str = "",
) -> dict[str, Any]:
    """The exit task: ends the run's MLflow parent with the pipeline's final state, and
    names it after the pipeline run (`run_name`, KFP's run name) where one is given.

    A run stopped early (e.g. at the validation gate) may have no parent yet; one is
    created, so every pipeline run leaves a record with its status and error.
    """
    from components.settings import configure
    from components.tracking import client_for, find_or_create_parent, get_or_create_experiment

    uri = configure().tracking_uri
    client = client_for(uri)
    exp_id = get_or_create_experiment(client, experiment, uri)
    parent = find_or_create_parent(client, exp_id, pipeline_run_id)
    status = "FINISHED" if state.upper() in ("SUCCEEDED", "SUCCESS", "FINISHED") else "FAILED"
    client.set_tag(parent, "pipeline_state", state)
    if error:
        client.set_tag(parent, "pipeline_error", error[:5000])
    if run_name:
        client.update_run(parent, name=run_name)
    client.set_terminated(parent, status)
    return {"parent_run_id": parent, "status": status, "tracking_uri": uri}
