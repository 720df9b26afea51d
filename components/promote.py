"""The promotion gate: a registered challenger replaces the `champion` only if it is better.

Rules, all of which must pass (`evaluate_gate`, a pure function of two `VersionInfo`s):

1. **parity**: the challenger's export passed its parity check (`parity_passed=true`) and
   its `export/onnx/max_abs_diff` is at most `parity_tolerance`;
2. **primary metric** present on the challenger;
3. with a champion:
   - **same eval data**: both were evaluated on the same `eval_data_version` (a number
     measured on other data is not comparable; an unknown version counts as different);
   - **primary**: challenger - champion >= `min_improvement` (signs flipped for
     lower-is-better metrics);
   - **secondary** metrics: no regression beyond each metric's `margin`
     (challenger >= champion - margin).
   Without a champion the first model that passes 1 and 2 is promoted.

`promote` runs the gate against the version the `champion` alias points at and moves the
alias only when the gate passes (or when forced, with a reason). `rollback` moves it back
to an earlier version. Every decision, either way, is recorded twice:

- on the model version, as tags `promotion.decision`, `promotion.reasons` (JSON list),
  `promotion.compared_to`, `promotion.timestamp`, `promotion.actor`, `promotion.reason`
  and `promotion.history_run` (the latest decision about that version);
- in the **promotion history**: one MLflow run per decision in the experiment
  `tipsv2-promotions`, with tags `registered_model`, `model_version`, `decision`,
  `compared_to`, `champion_before`, `champion_after`, `actor`, `reason`, the primary
  values as metrics and the full record (`decision.json`: every rule, the config) as an
  artifact. Runs rather than one growing JSON-lines file or registered-model tag: they are
  append-only (two concurrent decisions cannot overwrite each other's record, as a
  read-modify-write of a file or tag could), have no size limit (tags stop at 5000
  characters), and are queryable with MLflow's own search
  (`mlflow.search_runs(experiment_names=["tipsv2-promotions"],
  filter_string="tags.registered_model = 'NAME'")`) and visible in its UI.

The gate config is a dataclass, loadable from JSON or YAML::

    primary_metric: eval/zeroshot_seg/ade150/miou
    higher_is_better: true
    min_improvement: 0.0
    secondary:
      eval/retrieval/coco/i2t_r@1: {margin: 0.01}
      eval/knn/imagenet/top1: 0.005           # shorthand for {margin: 0.005}
    parity_tolerance: 1.0e-4
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from components.registry import (
    CHAMPION,
    PARITY_METRIC,
    RegistryError,
    VersionInfo,
    alias_version,
    version_info,
)
from components.tracking import (
    client_for,
    get_or_create_experiment,
    resolve_tracking_uri,
)
from components.tracking.scrub import key_candidates, lookup_metric, readable_key, sanitize_key
from tipsv2_core.schema import build, parse_mapping

if TYPE_CHECKING:
    from mlflow import MlflowClient

HISTORY_EXPERIMENT = "tipsv2-promotions"
DEFAULT_PARITY_TOLERANCE = 1e-4  # tipsv2_core.export.TOLERANCE, the export's own bar
ACTOR_ENV = "TIPSV2_ACTOR"  # who acts, where the login name means nothing (CI, pods)

# Version tags (the latest decision about a version).
TAG_DECISION = "promotion.decision"
TAG_REASONS = "promotion.reasons"
TAG_COMPARED_TO = "promotion.compared_to"
TAG_TIMESTAMP = "promotion.timestamp"
TAG_ACTOR = "promotion.actor"
TAG_REASON = "promotion.reason"
TAG_HISTORY_RUN = "promotion.history_run"
TAG_SUPERSEDED_BY = "promotion.superseded_by"  # on a champion that another replaced
MAX_TAG_VALUE = 5000
MAX_HISTORY = 10_000  # decisions read back to find a model's past champions

Action = Literal["promoted", "refused", "forced", "rollback"]
NONE = "none"


class PromotionError(RegistryError):
    """A promotion request that cannot be served (bad config, unknown version, …)."""


# ---------------------------------------------------------------------------------------
# config


@dataclass(frozen=True)
class MetricRule:
    """A secondary metric the challenger must not regress on by more than `margin`."""

    metric: str
    margin: float = 0.0  # absolute; how far the challenger may trail the champion
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if not self.margin >= 0:
            raise PromotionError(f"{self.metric}: margin must be >= 0, got {self.margin}")


@dataclass(frozen=True)
class GateConfig:
    """What the gate compares and how strictly.

    primary_metric: the metric that decides (e.g. `eval/zeroshot_seg/ade150/miou`);
    min_improvement: how much better the challenger must be on it (0: not worse);
    secondary: non-regression rules for other metrics; parity_tolerance: the largest
    `export/onnx/max_abs_diff` a promotable export may have; require_same_eval_data: refuse
    when the two versions were evaluated on different (or unknown) eval data versions.
    """

    primary_metric: str
    higher_is_better: bool = True
    min_improvement: float = 0.0
    secondary: tuple[MetricRule, ...] = ()
    parity_tolerance: float = DEFAULT_PARITY_TOLERANCE
    require_same_eval_data: bool = True

    def __post_init__(self) -> None:
        if not self.primary_metric:
            raise PromotionError("the gate needs a primary metric")
        if not self.parity_tolerance >= 0:
            raise PromotionError(f"parity_tolerance must be >= 0, got {self.parity_tolerance}")
        if not math.isfinite(self.min_improvement):
            raise PromotionError("min_improvement must be finite")

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> GateConfig:
        """From `{"primary_metric": ..., "secondary": {metric: {margin, higher_is_better}
        | margin} | [{"metric": ..., ...}], ...}`; unknown keys (typos) and wrong types
        are a PromotionError naming the key (tipsv2_core/schema.py)."""
        doc = dict(doc)
        raw = doc.get("secondary") or ()
        if isinstance(raw, Mapping):  # the short form: metric -> margin, or -> its rule
            doc["secondary"] = [
                {"metric": str(metric), **rule}
                if isinstance(rule, Mapping)
                else {"metric": str(metric), "margin": rule}
                for metric, rule in raw.items()
            ]
        elif isinstance(raw, Sequence) and not isinstance(raw, str):
            doc["secondary"] = [asdict(r) if isinstance(r, MetricRule) else r for r in raw]
        return build(cls, doc, what="gate config key(s)", error=PromotionError)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> GateConfig:
        """A `.json` or YAML file holding `from_dict`'s mapping."""
        path = Path(path)
        return cls.from_dict(parse_mapping(path.read_text(), str(path), error=PromotionError))

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["secondary"] = {
            r.metric: {"margin": r.margin, "higher_is_better": r.higher_is_better}
            for r in self.secondary
        }
        return doc


def default_primary_metric(challenger: VersionInfo) -> str:
    """The paper's headline metric when the challenger has exactly one: zero-shot mIoU.

    For `tipsv2 promote` without `--config` / `--primary-metric`; anything ambiguous is
    an error rather than a guess.
    """
    found = sorted(
        k for k in challenger.metrics if k.startswith("eval/zeroshot_seg/") and k.endswith("/miou")
    )
    if len(found) != 1:
        raise PromotionError(
            f"{challenger.name} v{challenger.version}: give a primary metric (--primary-metric "
            f"or --config); found {len(found)} eval/zeroshot_seg/*/miou metrics {found}"
        )
    return found[0]


def resolve_config(
    config: GateConfig | Mapping[str, Any] | None, challenger: VersionInfo
) -> GateConfig:
    """A GateConfig as given, or built from a mapping (e.g. command-line overrides) whose
    missing `primary_metric` is `default_primary_metric(challenger)`."""
    if isinstance(config, GateConfig):
        return config
    doc = dict(config or {})
    if not doc.get("primary_metric"):
        doc["primary_metric"] = default_primary_metric(challenger)
    return GateConfig.from_dict(doc)


# ---------------------------------------------------------------------------------------
# the gate


@dataclass(frozen=True)
class RuleResult:
    """One rule's verdict with the numbers it compared."""

    rule: str  # "parity" | "primary" | "secondary" | "eval_data_version" | "champion"
    passed: bool
    message: str
    metric: str | None = None
    challenger: float | str | None = None
    champion: float | str | None = None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        for k in ("challenger", "champion"):
            if isinstance(doc[k], float) and not math.isfinite(doc[k]):
                doc[k] = str(doc[k])
        return doc


@dataclass(frozen=True)
class GateResult:
    """All rule verdicts; `passed` when every one passed."""

    rules: tuple[RuleResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rules)

    @property
    def failures(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.passed]

    def reasons(self) -> list[str]:
        """Why it failed (failing rules only), or why it passed (every rule)."""
        rules = self.failures if not self.passed else list(self.rules)
        return [r.message for r in rules]


def _fmt(x: float | None) -> str:
    return "missing" if x is None else f"{x:.6g}"


def _parity_rule(ch: VersionInfo, tolerance: float) -> RuleResult:
    diff = ch.max_abs_diff
    if ch.parity_passed is not True:
        verdict = "failed" if ch.parity_passed is False else "is not recorded"
        message = f"export parity check {verdict} (tag parity_passed)"
        return RuleResult("parity", False, message, PARITY_METRIC, challenger=diff)
    if diff is None or not diff <= tolerance:
        message = f"{PARITY_METRIC} = {_fmt(diff)} exceeds the tolerance {tolerance:g}"
        return RuleResult("parity", False, message, PARITY_METRIC, challenger=diff)
    message = f"{PARITY_METRIC} = {_fmt(diff)} <= {tolerance:g}"
    return RuleResult("parity", True, message, PARITY_METRIC, challenger=diff)


def _better_by(ch: float, cp: float, higher_is_better: bool) -> float:
    """How much better the challenger is (negative: worse)."""
    return ch - cp if higher_is_better else cp - ch


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _name(metric: str) -> str:
    """A rule's metric as a reader writes it: `…/i2t_r@1` for `i2t_r@1`, `i2t_r:1` and
    the older `i2t_r_at_1` alike."""
    return readable_key(key_candidates(metric)[0])


def evaluate_gate(
    challenger: VersionInfo, champion: VersionInfo | None, config: GateConfig
) -> GateResult:
    """Every rule of the module docstring, evaluated; nothing is read or written."""
    rules = [_parity_rule(challenger, config.parity_tolerance)]
    # Rules name metrics as users write them (`i2t_r@1`); the lookups find a version's
    # value whichever spelling its keys have (components.tracking.scrub.key_candidates).
    primary = _name(config.primary_metric)
    ch_value = lookup_metric(challenger.metrics, primary)
    if not _finite(ch_value):
        message = f"challenger has no value for {primary}"
        rules.append(RuleResult("primary", False, message, primary, challenger=ch_value))
    if champion is None:
        rules.append(RuleResult("champion", True, "no champion yet: first model"))
        return GateResult(tuple(rules))

    if config.require_same_eval_data:
        a, b = challenger.eval_data_version, champion.eval_data_version
        same = a is not None and a == b and a != "unknown"
        message = (
            f"same eval data version {a}"
            if same
            else f"eval data versions differ or are unknown: challenger {a}, champion {b} "
            f"(v{champion.version}); metrics are not comparable"
        )
        rules.append(RuleResult("eval_data_version", same, message, None, a, b))

    if _finite(ch_value):
        assert ch_value is not None
        cp_value = lookup_metric(champion.metrics, primary)
        if not _finite(cp_value):
            # A champion without the metric cannot be compared on it: refuse, do not guess.
            message = f"champion v{champion.version} has no value for {primary}; cannot compare"
            rules.append(RuleResult("primary", False, message, primary, ch_value, cp_value))
        else:
            assert cp_value is not None
            gain = _better_by(ch_value, cp_value, config.higher_is_better)
            ok = gain >= config.min_improvement
            word = "better" if gain > 0 else "worse" if gain < 0 else "equal"
            need = f" (needs >= {config.min_improvement:g})" if config.min_improvement else ""
            message = (
                f"{primary}: challenger {_fmt(ch_value)} vs champion {_fmt(cp_value)}: "
                f"{word} by {abs(gain):.6g}{need}"
            )
            rules.append(RuleResult("primary", ok, message, primary, ch_value, cp_value))

    for rule in config.secondary:
        key = _name(rule.metric)
        a, b = lookup_metric(challenger.metrics, key), lookup_metric(champion.metrics, key)
        if not _finite(a):
            message = f"challenger has no value for {key}"
            rules.append(RuleResult("secondary", False, message, key, a, b))
            continue
        assert a is not None
        if not _finite(b):
            # A metric the champion never had cannot regress; recorded, not compared.
            message = f"{key}: champion has no value; not compared (challenger {_fmt(a)})"
            rules.append(RuleResult("secondary", True, message, key, a, b))
            continue
        assert b is not None
        drop = -_better_by(a, b, rule.higher_is_better)
        ok = drop <= rule.margin
        change = f"regresses by {drop:.6g}" if drop > 0 else "no regression"
        message = (
            f"{key}: challenger {_fmt(a)} vs champion {_fmt(b)}: {change} (margin {rule.margin:g})"
        )
        rules.append(RuleResult("secondary", ok, message, key, a, b))
    return GateResult(tuple(rules))


# ---------------------------------------------------------------------------------------
# decisions


@dataclass(frozen=True)
class Decision:
    """One recorded decision about `version` of `name`.

    action: "promoted" / "refused" (the gate), "forced" (champion moved despite the
    gate, with `reason`), "rollback" (champion moved back). `champion_after` is the
    champion once the decision was applied.
    """

    name: str
    version: str
    action: Action
    champion_before: str | None
    champion_after: str | None
    compared_to: str | None
    reasons: tuple[str, ...]
    rules: tuple[RuleResult, ...]
    actor: str
    reason: str | None
    timestamp: str
    config: dict[str, Any] | None = None
    history_run_id: str | None = None

    @property
    def moved(self) -> bool:
        """True when the champion alias now points at `version` because of this decision."""
        return self.action in ("promoted", "forced", "rollback")

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["rules"] = [r.to_json() for r in self.rules]
        doc["reasons"] = list(self.reasons)
        doc["moved"] = self.moved
        return doc


def current_actor() -> str:
    """`$TIPSV2_ACTOR`, else the login name, else "unknown"."""
    if os.environ.get(ACTOR_ENV):
        return os.environ[ACTOR_ENV]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _reasons_json(reasons: Sequence[str], limit: int = MAX_TAG_VALUE) -> str:
    """The reasons as a JSON list that fits in a tag: long ones are cut, the list stays
    valid JSON (the full text is in the history run's decision.json)."""
    items = list(reasons)
    text = json.dumps(items)
    while len(text) > limit and items:
        longest = max(range(len(items)), key=lambda i: len(items[i]))
        items[longest] = items[longest][: max(len(items[longest]) // 2, 8)] + "…"
        if len(items[longest]) <= 9:
            items.pop(longest)
        text = json.dumps(items)
    return text


def _record(client: MlflowClient, tracking_uri: str, decision: Decision) -> Decision:
    """Writes `decision` to the history (a run) and to the version's tags; returns it with
    the history run id filled in."""
    from mlflow.entities import Metric, Param

    exp = get_or_create_experiment(client, HISTORY_EXPERIMENT, tracking_uri)
    tags = {
        "registered_model": decision.name,
        "model_version": decision.version,
        "decision": decision.action,
        "compared_to": decision.compared_to or NONE,
        "champion_before": decision.champion_before or NONE,
        "champion_after": decision.champion_after or NONE,
        "actor": decision.actor,
        "reason": (decision.reason or "")[:MAX_TAG_VALUE],
        "reasons": _reasons_json(decision.reasons),
        "timestamp": decision.timestamp,
        "tipsv2_kind": "promotion",
    }
    run = client.create_run(
        exp, run_name=f"{decision.name}/v{decision.version}/{decision.action}", tags=tags
    )
    run_id = run.info.run_id
    params = [Param(f"gate.{k}", json.dumps(v)[:6000]) for k, v in (decision.config or {}).items()]
    # The compared numbers as metrics, so a history of decisions can be plotted and queried.
    ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    metrics = [
        Metric(sanitize_key(f"{side}/{r.metric}"), float(value), ms, 0)
        for r in decision.rules
        if r.metric
        for side, value in (("challenger", r.challenger), ("champion", r.champion))
        if isinstance(value, int | float) and math.isfinite(value)
    ]
    client.log_batch(run_id, metrics=metrics, params=params)
    recorded = replace(decision, history_run_id=run_id)
    client.log_text(run_id, json.dumps(recorded.to_json(), indent=2) + "\n", "decision.json")
    client.set_terminated(run_id)
    for key, value in {
        TAG_DECISION: decision.action,
        TAG_REASONS: _reasons_json(decision.reasons),
        TAG_COMPARED_TO: decision.compared_to or NONE,
        TAG_TIMESTAMP: decision.timestamp,
        TAG_ACTOR: decision.actor,
        TAG_REASON: (decision.reason or "")[:MAX_TAG_VALUE],
        TAG_HISTORY_RUN: run_id,
    }.items():
        client.set_model_version_tag(decision.name, decision.version, key, value)
    if decision.moved and decision.champion_before not in (None, decision.version):
        note = f"v{decision.version} {decision.action} {decision.timestamp}"
        client.set_model_version_tag(
            decision.name, str(decision.champion_before), TAG_SUPERSEDED_BY, note
        )
    return recorded


def _move_champion(client: MlflowClient, name: str, version: str, expected: str | None) -> None:
    """Points `champion` at `version`, unless another decision moved it since we looked.

    MLflow has no compare-and-set on aliases; re-reading right before the move narrows
    the window in which two concurrent promotions could both act on a stale champion.
    """
    now = alias_version(client, name, CHAMPION)
    if now != expected:
        raise PromotionError(
            f"{name}: champion moved from v{expected} to v{now} while this decision was "
            "being made; run it again"
        )
    client.set_registered_model_alias(name, CHAMPION, version)


def promote(
    name: str,
    version: str | int,
    config: GateConfig | Mapping[str, Any] | None = None,
    *,
    force: bool = False,
    reason: str | None = None,
    actor: str | None = None,
    tracking_uri: str | None = None,
) -> Decision:
    """Runs the gate for `version` against the current champion; moves `champion` if it
    passes (or if `force`, which needs a `reason`). Records the decision either way.

    config: a GateConfig, or a mapping of its fields (see `resolve_config`: the primary
    metric defaults to the challenger's only zero-shot mIoU). A forced promotion still
    evaluates and records the gate (so the history says which rules were overridden);
    only when no primary metric can be derived is the gate skipped for it. The alias is
    moved before the record is written, so a failure while recording (an outage) leaves
    a moved champion and an error, never a record of a move that did not happen.
    """
    if force and not (reason and reason.strip()):
        raise PromotionError("a forced promotion needs a reason (--reason)")
    uri = resolve_tracking_uri(tracking_uri)
    client = client_for(uri)
    version = str(version)
    challenger = version_info(client, name, version)
    champion_version = alias_version(client, name, CHAMPION)
    if champion_version == version:
        raise PromotionError(f"{name} v{version} is already the champion")
    champion = (
        version_info(client, name, champion_version) if champion_version is not None else None
    )
    gate_config: GateConfig | None = None
    try:
        gate_config = resolve_config(config, challenger)
    except PromotionError:
        if not force:
            raise
    gate = GateResult(())
    if gate_config is not None:
        gate = evaluate_gate(challenger, champion, gate_config)
    if force:
        action: Action = "forced"
        overridden = [f"overridden: {m}" for m in (r.message for r in gate.failures)]
        reasons = (f"forced by {actor or current_actor()}: {reason}", *overridden)
    else:
        action = "promoted" if gate.passed else "refused"
        reasons = tuple(gate.reasons())
    moved = action != "refused"
    if moved:
        _move_champion(client, name, version, champion_version)
    decision = Decision(
        name=name,
        version=version,
        action=action,
        champion_before=champion_version,
        champion_after=version if moved else champion_version,
        compared_to=champion_version,
        reasons=reasons,
        rules=gate.rules,
        actor=actor or current_actor(),
        reason=reason,
        timestamp=_now(),
        config=gate_config.to_dict() if gate_config is not None else None,
    )
    return _record(client, uri, decision)


def rollback(
    name: str,
    to_version: str | int,
    *,
    reason: str | None = None,
    actor: str | None = None,
    tracking_uri: str | None = None,
    force: bool = False,
) -> Decision:
    """Moves `champion` back to `to_version` (no gate: the point is to undo a promotion),
    recording who and why.

    A rollback only goes back: `to_version` must have been the champion before (the
    promotion history says so) and must be older than the current champion. Anything
    else would be a way round the gate (a version it refused, one evaluated on other
    data, a newer one); `force` with a `reason` allows it, and the history records the
    override. The version must exist and must not be the champion already.
    """
    if force and not (reason and reason.strip()):
        raise PromotionError("a forced rollback needs a reason (--reason)")
    uri = resolve_tracking_uri(tracking_uri)
    client = client_for(uri)
    to_version = str(to_version)
    version_info(client, name, to_version)  # raises for an unknown model or version
    before = alias_version(client, name, CHAMPION)
    if before == to_version:
        raise PromotionError(f"{name} v{to_version} is already the champion")
    who = actor or current_actor()
    problems = _rollback_problems(name, to_version, before, uri)
    if problems and not force:
        raise PromotionError(
            f"{name}: cannot roll back to v{to_version}: {'; '.join(problems)} "
            "(--force --reason overrides, and is recorded)"
        )
    _move_champion(client, name, to_version, before)
    said = f": {reason}" if reason else ""
    if force:
        reasons = (f"forced rollback from v{before} by {who}{said}",)
        reasons += tuple(f"overridden: {p}" for p in problems)
    else:
        reasons = (f"rolled back from v{before} by {who}{said}",)
    decision = Decision(
        name=name,
        version=to_version,
        action="rollback",
        champion_before=before,
        champion_after=to_version,
        compared_to=before,
        reasons=reasons,
        rules=(),
        actor=who,
        reason=reason,
        timestamp=_now(),
    )
    return _record(client, uri, decision)


def _rollback_problems(name: str, to_version: str, champion: str | None, uri: str) -> list[str]:
    """Why moving `champion` to `to_version` would not be a rollback (empty: it is one)."""
    problems = []
    past = {
        v
        for event in history(name, tracking_uri=uri, limit=MAX_HISTORY)
        for v in (event["champion_before"], event["champion_after"])
        if v is not None
    }
    if to_version not in past:
        problems.append(f"v{to_version} was never the champion")
    if champion is not None and _version_number(to_version) > _version_number(champion):
        problems.append(
            f"v{to_version} is newer than the champion v{champion} (a rollback never moves "
            "forward; promote it through the gate)"
        )
    return problems


def _version_number(version: str) -> int:
    try:
        return int(version)
    except ValueError:
        raise PromotionError(f"model version {version!r} is not a number") from None


def history(
    name: str, *, tracking_uri: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The recorded decisions about model `name`, newest first (from the history runs)."""
    client = client_for(tracking_uri)
    exp = client.get_experiment_by_name(HISTORY_EXPERIMENT)
    if exp is None:
        return []
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.registered_model = '{name.replace(chr(39), chr(92) + chr(39))}'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    out = []
    for run in runs:
        t = run.data.tags
        out.append(
            {
                "timestamp": t.get("timestamp"),
                "version": t.get("model_version"),
                "decision": t.get("decision"),
                "compared_to": _none(t.get("compared_to")),
                "champion_before": _none(t.get("champion_before")),
                "champion_after": _none(t.get("champion_after")),
                "actor": t.get("actor"),
                "reason": t.get("reason") or None,
                "reasons": json.loads(t.get("reasons") or "[]"),
                "history_run_id": run.info.run_id,
            }
        )
    # Same-millisecond runs: the recorded timestamp (microseconds) breaks the tie.
    return sorted(out, key=lambda d: d["timestamp"] or "", reverse=True)


def _none(value: str | None) -> str | None:
    return None if value in (None, "", NONE) else value


def secondary_rules(specs: Sequence[str]) -> tuple[MetricRule, ...]:
    """`METRIC=MARGIN` strings (the CLI's `--margin`) as rules; a leading `-` on METRIC
    (`-eval/x/y/loss=0.1`) marks a lower-is-better metric."""
    rules = []
    for spec in specs:
        metric, sep, margin = spec.rpartition("=")
        if not sep or not metric:
            raise PromotionError(f"--margin {spec!r}: expected METRIC=MARGIN")
        lower = metric.startswith("-")
        try:
            value = float(margin)
        except ValueError:
            raise PromotionError(f"--margin {spec!r}: {margin!r} is not a number") from None
        rules.append(MetricRule(metric.removeprefix("-"), value, higher_is_better=not lower))
    return tuple(rules)


__all__ = [
    "HISTORY_EXPERIMENT",
    "Decision",
    "GateConfig",
    "GateResult",
    "MetricRule",
    "PromotionError",
    "RuleResult",
    "default_primary_metric",
    "evaluate_gate",
    "history",
    "promote",
    "resolve_config",
    "rollback",
    "secondary_rules",
]
