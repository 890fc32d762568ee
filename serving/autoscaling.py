"""Serve's autoscaling policy for variants: replicas follow the requests the replicas hold.

Serve's default policy counts the calls its handles have in flight. A router coalesces many
requests into one call (router/coalesce.py), so calls undercount the load by the batch factor.
Each replica instead reports the requests it holds (`record_autoscaling_stats` in
serving/deployment.py), and this policy aims at `target_ongoing_requests` of those per replica,
as Serve's default aims at calls. Serve wraps a custom policy with the deployment's bounds,
delays and scaling factors, so only the desired count is decided here.

Serve's controller imports this module by its path (`POLICY`); it imports nothing of Quiver's.
"""

from __future__ import annotations

from typing import Any

from ray.serve.config import AutoscalingContext

REQUESTS_METRIC = "quiver_requests"
POLICY = {"policy_function": f"{__name__}:requests_policy"}


def requests_policy(ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
    """Desired replicas: the requests all replicas hold (averaged over Serve's look-back window),
    over the target per replica; Serve's own count of calls until replicas have reported."""
    if ctx.current_num_replicas == 0:
        return ctx.target_num_replicas, {}
    held = (ctx.aggregated_metrics or {}).get(REQUESTS_METRIC)
    load = sum(held.values()) if held else ctx.total_num_requests
    return load / ctx.config.get_target_ongoing_requests(), {}
