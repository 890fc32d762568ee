"""Triton's protocol extensions in gRPC form: the servicer's encoders for ModelConfig, ModelStatistics, the repository index
and shared memory status.

The values come from router/modelconfig.py and router/statistics.py, which know no transport;
this module only maps them onto Triton's messages (protos/model_config.proto and the extension
messages of protos/grpc_predict_v2.proto, with Triton's names and field numbers).
"""

from __future__ import annotations

from quiver._proto import grpc_predict_v2_pb2 as pb
from quiver._proto import model_config_pb2 as mc

from .modelconfig import ModelConfig
from .repository import ModelIndex
from .shared_memory import RegionStatus
from .statistics import Duration, VersionStatistics


def model_config(config: ModelConfig) -> pb.ModelConfigResponse:
    message = mc.ModelConfig(
        name=config.name,
        platform=config.platform,
        backend=config.backend,
        max_batch_size=config.max_batch_size,
        input=[mc.ModelInput(name=t.name, data_type=mc.DataType.Value(t.data_type), dims=t.dims) for t in config.inputs],
        output=[mc.ModelOutput(name=t.name, data_type=mc.DataType.Value(t.data_type), dims=t.dims) for t in config.outputs],
        instance_group=[
            mc.ModelInstanceGroup(name=g.name, kind=mc.ModelInstanceGroup.Kind.Value(g.kind), count=g.count)
            for g in config.instance_groups
        ],
    )
    if config.dynamic_batching is not None:
        message.dynamic_batching.max_queue_delay_microseconds = config.dynamic_batching.max_queue_delay_us
    return pb.ModelConfigResponse(config=message)


def model_statistics(versions: list[VersionStatistics]) -> pb.ModelStatisticsResponse:
    return pb.ModelStatisticsResponse(model_stats=[_version(stats) for stats in versions])


def repository_index(models: list[ModelIndex]) -> pb.RepositoryIndexResponse:
    Index = pb.RepositoryIndexResponse.ModelIndex
    return pb.RepositoryIndexResponse(models=[Index(name=m.name, version=m.version, state=m.state, reason=m.reason) for m in models])


def region_status(regions: list[RegionStatus]) -> pb.SystemSharedMemoryStatusResponse:
    Status = pb.SystemSharedMemoryStatusResponse.RegionStatus
    return pb.SystemSharedMemoryStatusResponse(
        regions={r.name: Status(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size) for r in regions}
    )


def _version(stats: VersionStatistics) -> pb.ModelStatistics:
    return pb.ModelStatistics(
        name=stats.name,
        version=stats.version,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(stats.success),
            fail=_duration(stats.fail),
            queue=_duration(stats.queue),
            compute_input=_duration(stats.compute_input),
            compute_infer=_duration(stats.compute_infer),
            compute_output=_duration(stats.compute_output),
        ),
    )


def _duration(duration: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=duration.count, ns=duration.ns)
