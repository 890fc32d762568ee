"""The fault tests' counts, for `python -m benchmarks.faults` to publish.

Each fault test (test_cluster_loss, test_pools, test_replica_failure, test_router_restart,
test_overload, test_head_loss) calls `record(...)` beside the line that prints its counts. When
the environment names a file in QUIVER_FAULTS_OUT, one JSON line is appended to it per call; when
it does not (an ordinary test run), nothing is written.
"""

from __future__ import annotations

import json
import os
import time

OUT = "QUIVER_FAULTS_OUT"


def record(fault: str, **counts: object) -> None:
    """One test's counts: `fault` names the test and case, `counts` what was sent and how it was answered."""
    path = os.environ.get(OUT)
    if not path:
        return
    line = json.dumps({"fault": fault, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **counts}, default=str)
    with open(path, "a") as out:
        out.write(line + "\n")
