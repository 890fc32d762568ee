"""ONNX Runtime, wrapped: one session per variant, verified, placed, sized and warmed up.

The only module that imports onnxruntime. A replica owns one `ModelRuntime`; the router never
sees it.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

from .manifest import Device, TensorSpec, Threads
from .requests import InferenceError

logger = logging.getLogger(__name__)

# In order of preference; a provider listed by onnxruntime may still fail to initialise
# (no CUDA libraries, no TensorRT), in which case ORT drops it and we say so.
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class ModelRuntime:
    """An ONNX Runtime session over one verified model file."""

    def __init__(
        self,
        model: bytes,
        name: str,
        inputs: list[TensorSpec],
        device: Device = Device.CPU,
        cpus: float = 1.0,
        threads: Threads = Threads(),
    ) -> None:
        """`model`: the ONNX bytes, already verified (serving/integrity.py); `name` is for logs."""

        options = ort.SessionOptions()
        # By default one thread per core the replica owns: more only contend (`quiver tune` measures otherwise).
        options.intra_op_num_threads = threads.intra_op or max(1, math.floor(cpus))
        options.inter_op_num_threads = threads.inter_op
        if threads.inter_op > 1:  # inter-op threads only run with the parallel executor
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        # Spinning threads burn the cores the router and the other replicas need between runs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

        wanted = _providers(device)
        self._session = ort.InferenceSession(model, sess_options=options, providers=wanted)
        self.providers: list[str] = self._session.get_providers()
        if device is Device.GPU and not set(_GPU_PROVIDERS) & set(self.providers):
            logger.warning("%s: no GPU execution provider could start; running on CPU", name)
        self._inputs = inputs
        self.output_names: list[str] = [output.name for output in self._session.get_outputs()]
        self.warm_up()

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on named inputs; returns every output by name."""
        try:
            results = self._session.run(self.output_names, inputs)
        except (Fail, InvalidArgument, RuntimeException) as exc:
            raise InferenceError(str(exc)) from exc
        return dict(zip(self.output_names, results))

    def warm_up(self) -> None:
        """One run on zeros, every variable dimension set to 1: allocations and kernels get made now."""
        sample = {
            spec.name: np.zeros([1 if dim == -1 else dim for dim in spec.shape], spec.datatype.numpy)
            for spec in self._inputs
        }
        self.run(sample)


def _providers(device: Device) -> list[str]:
    if device is Device.CPU:
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    gpu = [provider for provider in _GPU_PROVIDERS if provider in available]
    if not gpu:
        logger.warning("this onnxruntime build has no GPU execution provider; running on CPU")
    return [*gpu, "CPUExecutionProvider"]
