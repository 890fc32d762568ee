"""Wilson's score interval: how sure a share of agreeing rows is, for the router's live agreement
(router/agreement.py) and the operator's Shadow gate (operator/controller/gates.py) alike.

Sound at 0.99 agreement on a few hundred rows, where the normal approximation is not. Counts
may be fractional (summed scores, counters summed over routers).
"""

from __future__ import annotations

import math

Z_95 = 1.959964  # two-sided 95 %


def wilson_lower(successes: float, n: float, z: float = Z_95) -> float:
    """Wilson's score interval's lower end for `successes` of `n` (0 when n is 0)."""
    if n <= 0:
        return 0.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))
