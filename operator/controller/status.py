"""The ModelDeployment status as a typed model, and its conditions.

Everything the operator needs to carry on after a restart lives here, in the object itself:
the phase, the step and when it started, the metrics baseline the step's gates compare with.
"""

from __future__ import annotations

import datetime
import enum
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Phase(str, enum.Enum):
    OPTIMIZING = "Optimizing"  # the optimization Job runs
    TUNING = "Tuning"  # the tuning Job runs (spec.tuning)
    DEPLOYING = "Deploying"  # the new version's Serve applications start
    SHADOWING = "Shadowing"  # the new version answers mirrored requests only (spec.rollout.shadow)
    SHIFTING = "Shifting"  # traffic moves step by step
    SERVING = "Serving"  # one version takes all traffic
    FAILED = "Failed"  # the last rollout failed; the version before it serves


class ConditionType(str, enum.Enum):
    OPTIMIZED = "Optimized"
    TUNED = "Tuned"
    DEPLOYED = "Deployed"
    ROLLOUT_PROGRESSING = "RolloutProgressing"
    READY = "Ready"
    DEGRADED = "Degraded"


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(_Camel):
    type: ConditionType
    status: str  # "True", "False", "Unknown"
    reason: str = ""
    message: str = ""
    last_transition_time: str = ""


class Status(_Camel):
    observed_generation: int | None = None
    phase: Phase | None = None
    current_version: str | None = None
    previous_version: str | None = None
    target_version: str | None = None
    failed_version: str | None = None
    step: int = 0  # index into the rollout's weights
    step_started_at: float | None = None  # epoch seconds
    deploy_started_at: float | None = None
    baseline: dict[str, Any] | None = None  # gates.Sample (gates.ShadowSample while shadowing) at the step's start
    retiring: list[str] = []  # versions out of the routes whose applications go at the next look
    # The last Shadow step's verdict: version, against (the serving version), passed, agreement, lowerBound, rows.
    shadow: dict[str, Any] | None = None
    traffic: dict[str, int] = {}
    traffic_summary: str = ""
    variants: list[dict[str, Any]] = []
    conditions: list[Condition] = []

    def set(self, type: ConditionType, status: bool | None, reason: str, message: str = "") -> None:
        """Set a condition; its transition time moves only when its status does."""
        value = "Unknown" if status is None else str(status)
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        for condition in self.conditions:
            if condition.type == type:
                if condition.status != value:
                    condition.last_transition_time = now
                condition.status, condition.reason, condition.message = value, reason, message
                return
        self.conditions.append(Condition(type=type, status=value, reason=reason, message=message, last_transition_time=now))

    def condition(self, type: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == type), None)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)
