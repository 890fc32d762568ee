"""What a replica takes and gives back, request by request, and the errors that concern one request.

Shared by the replica's two doors (its Serve handle methods and its data plane,
serving/dataplane.py) and by the router, which builds the requests and reads the results.
Plain data: nothing here imports Ray or ONNX Runtime, so a router process never loads ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Tensors = dict[str, np.ndarray]


class InferenceError(Exception):
    """ONNX Runtime refused to run a request (its message names the problem)."""


class DeadlinePassed(Exception):
    """The request's deadline passed while it waited for a batch: its work was not started."""


@dataclass(frozen=True)
class InferenceRequest:
    """One request as a replica takes it: its inputs, and when it stops being worth starting."""

    inputs: Tensors
    deadline: float | None = None  # wall-clock (time.time()) seconds: replicas may run on other nodes
    received: float = 0.0  # time.monotonic() when the replica took it; the replica sets it

    @property
    def rows(self) -> int:
        return rows(self.inputs)


@dataclass(frozen=True)
class InferenceResult:
    """Every output of the model for one request, the batch it ran in, and where its time in the replica went."""

    outputs: Tensors
    batch_requests: int
    batch_rows: int
    queue_s: float = 0.0  # from its arrival in the replica until its batch started to run
    compute_s: float = 0.0  # its batch's ONNX Runtime call


def rows(inputs: Tensors) -> int:
    """Rows along the batch axis: the first input's leading dimension (1 for a scalar or no input)."""
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1
