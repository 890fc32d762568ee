"""Node pools: named sets of Ray nodes with one kind of hardware.

A node belongs to a pool by advertising the pool's custom Ray resource (`pool-<name>`): a
KubeRay worker group declares it in `rayStartParams`, `quiver serve` on its local node. Each
replica asks for a sliver of its variant's pool resource, so Ray can only place it there; the
node's CPUs and GPUs, not the sliver, bound how many replicas fit.
"""

from __future__ import annotations

# What a node advertises, and what one replica takes of it (Ray resolves 1/10,000).
NODE_CAPACITY = 10_000.0
REPLICA_SHARE = 1.0


def pool_resource(pool: str) -> str:
    return f"pool-{pool}"


def node_resources(pools: list[str]) -> dict[str, float]:
    """The custom resources a node of these pools advertises."""
    return {pool_resource(pool): NODE_CAPACITY for pool in pools}


def pools_with_nodes() -> set[str]:
    """The pools that have at least one live node in the connected Ray cluster."""
    import ray

    prefix = pool_resource("")
    return {
        resource[len(prefix):]
        for node in ray.nodes()
        if node["Alive"]
        for resource in node["Resources"]
        if resource.startswith(prefix)
    }
