"""The kopf handlers: small, idempotent, and all of them one look at the object (operator/rollout.py).

create/update/resume look at once; a timer looks again every tick, which is what moves a rollout
from step to step; delete removes what the ModelDeployment put into the cluster (its Serve
applications and its routes) and nothing else. A spec that the schema admits but that cannot
work is reported as conditions, and nothing is deployed.
"""

from __future__ import annotations

import threading
from typing import Any

import kopf

from .kube import ApiException, ApiUnreachable
from .rollout import Reconciler
from .serve_api import ServeApiError
from .spec import SpecError, parse_spec
from .status import ConditionType as C
from .status import Status

GROUP, VERSION, PLURAL = "serving.quiver.dev", "v1alpha1", "modeldeployments"
RESOURCE = (GROUP, VERSION, PLURAL)


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new` as a JSON merge patch over `old`: keys that are gone are sent as null (else they stay)."""
    patch: dict[str, Any] = {key: None for key in old if key not in new and key != "kopf"}
    for key, value in new.items():
        patch[key] = merge_patch(old[key], value) if isinstance(value, dict) and isinstance(old.get(key), dict) else value
    return patch


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler, tick_s: float) -> None:
    """Attach the handlers to `registry`, all of them driving `reconciler`."""
    # One look at a time per object: the timer and a change event may fire together.
    locks: dict[str, threading.Lock] = {}

    def look(name: str, uid: str | None, spec: dict, status: dict, meta: dict, patch: kopf.Patch, logger: Any) -> None:
        with locks.setdefault(name, threading.Lock()):
            current = Status.model_validate(status or {})
            try:
                parsed = parse_spec(dict(spec))
            except SpecError as exc:
                current.set(C.ROLLOUT_PROGRESSING, False, "InvalidSpec", str(exc))
                current.set(C.DEGRADED, True, "InvalidSpec", str(exc))
                new = current
            else:
                try:
                    new = reconciler.look(name, uid, parsed, current)
                except (ServeApiError, ApiException, ApiUnreachable, OSError) as exc:  # an API is away: look again next tick
                    logger.warning("cannot reach the cluster: %s", exc)
                    current.set(C.ROLLOUT_PROGRESSING, current.phase is not None, "ClusterUnavailable", str(exc))
                    new = current
            if meta.get("generation") is not None:
                new.observed_generation = meta["generation"]
            if new != Status.model_validate(status or {}):
                patch.status.update(merge_patch(dict(status or {}), new.dump()))

    @kopf.on.create(*RESOURCE, registry=registry)
    @kopf.on.update(*RESOURCE, field="spec", registry=registry)
    @kopf.on.resume(*RESOURCE, registry=registry)
    def changed(name: str, uid: str | None, spec: dict, status: dict, meta: dict, patch: kopf.Patch, logger: Any, **_: Any) -> None:
        look(name, uid, spec, status, meta, patch, logger)

    @kopf.timer(*RESOURCE, interval=tick_s, registry=registry)
    def tick(name: str, uid: str | None, spec: dict, status: dict, meta: dict, patch: kopf.Patch, logger: Any, **_: Any) -> None:
        look(name, uid, spec, status, meta, patch, logger)

    @kopf.on.delete(*RESOURCE, registry=registry)
    def deleted(name: str, spec: dict, logger: Any, **_: Any) -> None:
        model = (spec.get("model") or {}).get("name")
        if model:
            reconciler.forget(model)
            logger.info("removed the applications and routes of model %s", model)
