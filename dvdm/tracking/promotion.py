"""The promotion gate: a challenger version takes the `champion` alias only when it beats the champion.

`decide` is a pure function of two metric dicts and a `Gate` (metric, direction, margin), so the rule is
tested without a store. `promote` applies it to registered versions: the alias moves only on a win, and
the decision is recorded on the challenger as version tags (promoted or refused, why, the values) so the
registry keeps the history of which version was champion when, and why. A gate that cannot decide
(metric missing or not finite) never promotes and says why; the first version, with no champion yet,
is promoted.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dvdm.errors import ConfigError
from dvdm.tracking.errors import GateError

if TYPE_CHECKING:
    from mlflow import MlflowClient

PROMOTED_AT_TAG = "promoted_at"
PREVIOUS_CHAMPION_TAG = "previous_champion"
SUPERSEDED_BY_TAG = "superseded_by"
SUPERSEDED_AT_TAG = "superseded_at"
GATE_TAG_PREFIX = "gate."


@dataclass(frozen=True)
class Gate:
    """`metric` must improve in `direction` ("min": lower is better, like FVD; "max": like PSNR) by more
    than `margin` (absolute, or a fraction of the champion's value when `relative`)."""

    metric: str
    direction: str
    margin: float = 0.0
    relative: bool = False

    @classmethod
    def from_params(cls, params: Any, metric: str | None = None, direction: str | None = None,
                    margin: float | None = None) -> Gate:
        """The gate of a `promote` params section (`dvdm.config.PromoteParams`), with optional overrides:
        the one place the pipeline and the promote flow turn settings into a gate."""
        return cls(metric=metric or params.metric, direction=direction or params.direction,
                   margin=params.margin if margin is None else margin, relative=params.relative)

    def __post_init__(self) -> None:
        if self.direction not in ("min", "max"):
            raise ConfigError(f"promotion gate: direction must be 'min' or 'max', got {self.direction!r}")
        if not self.metric:
            raise ConfigError("promotion gate: metric name is empty")
        if not (isinstance(self.margin, (int, float)) and math.isfinite(self.margin) and self.margin >= 0):
            raise ConfigError(f"promotion gate: margin must be a finite number >= 0, got {self.margin!r}")

    def describe(self) -> str:
        unit = f"{self.margin:.4g} x champion" if self.relative else f"{self.margin:.4g}"
        better = "lower" if self.direction == "min" else "higher"
        return f"{self.metric} {better} by more than {unit}"


@dataclass(frozen=True)
class Decision:
    """What the gate decided and why. `decided` is False when it could not compare (never promotes then)."""

    promote: bool
    reason: str
    metric: str
    direction: str
    margin: float
    challenger_value: float | None = None
    champion_value: float | None = None
    challenger_version: str | None = None
    champion_version: str | None = None
    decided: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def decide(challenger: Mapping[str, float], champion: Mapping[str, float] | None, gate: Gate) -> Decision:
    """Compare challenger and champion metrics; `champion=None` means there is none (challenger wins).

    Raises GateError when the challenger (or an existing champion) lacks the metric or it is not finite.
    A tie, or an improvement of exactly `margin`, does not promote.
    """
    base = {"metric": gate.metric, "direction": gate.direction, "margin": float(gate.margin)}
    new = _value(challenger, gate.metric, "challenger")
    if champion is None:
        return Decision(True, f"no champion yet; challenger {gate.metric}={new:.6g} becomes champion",
                        challenger_value=new, **base)
    old = _value(champion, gate.metric, "champion")
    improvement = old - new if gate.direction == "min" else new - old
    needed = gate.margin * abs(old) if gate.relative else gate.margin
    if improvement > needed:
        verdict, ok = "beats", True
    else:
        verdict, ok = "does not beat", False
    reason = (f"challenger {gate.metric}={new:.6g} {verdict} champion {gate.metric}={old:.6g} "
              f"(needs {gate.describe()}; improvement {improvement:.6g})")
    return Decision(ok, reason, challenger_value=new, champion_value=old, **base)


def promote(client: "MlflowClient", challenger_version: str | int, gate: Gate, *, name: str | None = None,
            alias: str | None = None, now: _dt.datetime | None = None) -> Decision:
    """Run the gate for version `challenger_version` of model `name` against the current champion.

    On a win `alias` (default `champion`) moves to the challenger, which gets tags promoted_at,
    previous_champion and the gate values; the old champion gets superseded_by/superseded_at. On a loss
    or an undecidable gate nothing moves and the challenger gets the refusal reason as tags.
    """
    from dvdm.tracking.registry import (CHAMPION, MODEL_NAME, get_version, set_alias, version_by_alias,
                                        version_metrics)

    name = name or MODEL_NAME
    alias = alias or CHAMPION
    challenger = get_version(client, challenger_version, name)
    champion = version_by_alias(client, alias, name)
    versions = {"challenger_version": str(challenger.version),
                "champion_version": str(champion.version) if champion else None}
    if champion is not None and str(champion.version) == str(challenger.version):
        return Decision(False, f"version {challenger.version} already is {alias}", gate.metric, gate.direction,
                        float(gate.margin), **versions)
    try:
        decision = decide(version_metrics(client, challenger),
                          version_metrics(client, champion) if champion is not None else None, gate)
        decision = dataclasses.replace(decision, **versions)
    except GateError as exc:
        decision = Decision(False, f"cannot decide, not promoted: {exc}", gate.metric, gate.direction,
                            float(gate.margin), decided=False, **versions)
    stamp = (now or _dt.datetime.now(_dt.timezone.utc)).isoformat(timespec="seconds")
    tags = {"decision": "promoted" if decision.promote else ("refused" if decision.decided else "undecided"),
            "reason": decision.reason, "metric": gate.metric, "direction": gate.direction,
            "margin": repr(float(gate.margin)), "relative": str(gate.relative).lower(), "decided_at": stamp,
            "challenger_value": _tag(decision.challenger_value), "champion_value": _tag(decision.champion_value),
            "champion_version": decision.champion_version or "none"}
    for key, value in tags.items():  # the audit trail first: a crash after it leaves the reason, not a mystery
        client.set_model_version_tag(name, challenger.version, GATE_TAG_PREFIX + key, value)
    if decision.promote:
        set_alias(client, alias, challenger.version, name)
        client.set_model_version_tag(name, challenger.version, PROMOTED_AT_TAG, stamp)
        client.set_model_version_tag(name, challenger.version, PREVIOUS_CHAMPION_TAG,
                                     decision.champion_version or "none")
        if champion is not None:
            client.set_model_version_tag(name, champion.version, SUPERSEDED_BY_TAG, str(challenger.version))
            client.set_model_version_tag(name, champion.version, SUPERSEDED_AT_TAG, stamp)
    return decision


def _value(metrics: Mapping[str, float], key: str, who: str) -> float:
    if key not in metrics or metrics[key] is None:
        have = ", ".join(sorted(metrics)) or "none"
        raise GateError(f"the {who} has no metric {key!r} (it has: {have})")
    try:
        value = float(metrics[key])
    except (TypeError, ValueError) as exc:
        raise GateError(f"the {who}'s {key} is not a number: {metrics[key]!r}") from exc
    if not math.isfinite(value):
        raise GateError(f"the {who}'s {key} is {value}; a non-finite value cannot be compared")
    return value


def _tag(value: float | None) -> str:
    return "none" if value is None else repr(float(value))
