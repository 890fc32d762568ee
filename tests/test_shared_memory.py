"""System shared memory through the stock clients: tritonclient.utils.shared_memory makes the
segments, tritonclient.grpc and tritonclient.http register them and name them in requests.

The session's `quiver serve` reads the inputs from the segments and writes the outputs into
them; the answers are compared with ONNX Runtime run directly. Bad regions, offsets and sizes
are refused alike through both doors (INVALID_ARGUMENT / 400) and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from quiver.router.errors import InvalidArgument
from quiver.router.shared_memory import SharedMemory, write
from quiver.router.tensors import RegionRef
from quiver.serving import Endpoint, InferenceError, InferenceRequest, InferenceResult
from quiver.serving.dataplane import DataPlaneClient, DataPlaneServer, encode_requests

from .models import reference
from .serverproc import ServerProcess

ROWS, FEATURES, CLASSES = 3, 64, 10
STATUS = {"grpc": {"bad": "StatusCode.INVALID_ARGUMENT", "unknown": "StatusCode.NOT_FOUND", "twice": "StatusCode.ALREADY_EXISTS",
                   "unimplemented": "StatusCode.UNIMPLEMENTED"},
          "http": {"bad": "400", "unknown": "404", "twice": "409", "unimplemented": "501"}}  # fmt: skip


@pytest.fixture(params=["grpc", "http"])
def door(request: pytest.FixtureRequest, server: ServerProcess) -> Iterator[tuple[str, object]]:
    """One client of each protocol; the regions a test registered are unregistered after it."""
    if request.param == "grpc":
        client = triton_grpc.InferenceServerClient(server.address)
    else:
        client = triton_http.InferenceServerClient(server.http_url.removeprefix("http://"), network_timeout=60)
    yield request.param, client
    client.unregister_system_shared_memory()


@pytest.fixture
def segments() -> Iterator[callable]:
    """Makes shared memory segments (as a client on the router's host does); destroys them after the test."""
    handles = []

    def make(byte_size: int) -> tuple[str, object]:
        key = f"/quiver-test-{uuid.uuid4().hex[:12]}"
        handles.append(shm.create_shared_memory_region(key.lstrip("/"), key, byte_size))
        return key, handles[-1]

    yield make
    for handle in handles:
        shm.destroy_shared_memory_region(handle)


def module(kind: str) -> object:
    return triton_grpc if kind == "grpc" else triton_http


def regions(kind: str, client: object) -> dict[str, tuple[str, int, int]]:
    """The server's regions, each as (key, offset, byte_size), from either client's form of the status."""
    if kind == "grpc":
        status = client.get_system_shared_memory_status().regions
        return {name: (r.key, r.offset, r.byte_size) for name, r in status.items()}
    return {r["name"]: (r["key"], r["offset"], r["byte_size"]) for r in client.get_system_shared_memory_status()}


def example_request(kind: str, region: str, offset: int, output_region: str, output_offset: int) -> tuple[list, list]:
    triton = module(kind)
    tensor = triton.InferInput("input", [ROWS, FEATURES], "FP32")
    tensor.set_shared_memory(region, ROWS * FEATURES * 4, offset)
    output = triton.InferRequestedOutput("output")
    output.set_shared_memory(output_region, 4096, output_offset)
    return [tensor], [output]




def test_inputs_and_outputs_in_shared_memory(door: tuple[str, object], segments: callable, store: Path) -> None:
    kind, client = door
    features = np.random.default_rng(3).standard_normal((ROWS, FEATURES)).astype(np.float32)
    # The input sits at an offset into a region that itself starts at an offset into its segment.
    in_key, in_handle = segments(8192)
    shm.set_shared_memory_region(in_handle, [features], offset=1024 + 256)
    out_key, out_handle = segments(8192)
    client.register_system_shared_memory("in", in_key, 4096, offset=1024)
    client.register_system_shared_memory("out", out_key, 8192)
    assert regions(kind, client) == {"in": (in_key, 1024, 4096), "out": (out_key, 0, 8192)}

    inputs, outputs = example_request(kind, "in", 256, "out", 128)
    result = client.infer("example", inputs, outputs=outputs)

    expected = reference(store / "example" / "1" / "model.onnx", {"input": features})["output"]
    output = result.get_output("output")
    if kind == "grpc":  # no bytes in the answer: the output's raw entry is there, empty, as Triton's is
        assert result.get_response().raw_output_contents == [b""]
        parameters = {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in output.parameters.items()}
        assert parameters == {"shared_memory_region": "out", "shared_memory_byte_size": ROWS * CLASSES * 4, "shared_memory_offset": 128}
    else:  # neither data nor parameters, as Triton answers (its C++ client takes any parameters for binary data's)
        assert output == {"name": "output", "datatype": "FP32", "shape": [ROWS, CLASSES]}
    answer = shm.get_contents_as_numpy(out_handle, np.float32, [ROWS, CLASSES], offset=128)
    np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-6)

    client.unregister_system_shared_memory("in")
    assert set(regions(kind, client)) == {"out"}


def test_one_input_in_shared_memory_the_other_in_the_message(door: tuple[str, object], segments: callable, store: Path) -> None:
    kind, client = door
    triton = module(kind)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    k = np.array([[1, 2], [3, 9]], dtype=np.int64)
    key, handle = segments(x.nbytes)
    shm.set_shared_memory_region(handle, [x])
    client.register_system_shared_memory("x", key, x.nbytes)
    x_input, k_input = triton.InferInput("x", [2, 3], "FP32"), triton.InferInput("k", [2, 2], "INT64")
    x_input.set_shared_memory("x", x.nbytes)
    k_input.set_data_from_numpy(k)
    result = client.infer("pair", [x_input, k_input], model_version="1")
    expected = reference(store / "pair" / "1" / "model.onnx", {"x": x, "k": k})
    np.testing.assert_allclose(result.as_numpy("total"), expected["total"])
    np.testing.assert_array_equal(result.as_numpy("looked_up"), expected["looked_up"])


def registered_ones(client: object, segments: callable, byte_size: int) -> tuple[str, object]:
    """A segment of `byte_size` bytes that starts with an example input of ones, registered whole as region 'in'."""
    key, handle = segments(byte_size)
    shm.set_shared_memory_region(handle, [np.ones((ROWS, FEATURES), np.float32)])
    client.register_system_shared_memory("in", key, byte_size)
    return key, handle


def mapped_by(segment: str) -> dict[str, str]:
    """The processes on this host that map the segment, by their titles (Ray names a replica's process
    ray::ServeReplica:...), each with the mapping's permissions ('r--s': read-only, shared)."""
    found = {}
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            lines = [line for line in maps.read_text().splitlines() if line.endswith(f"/dev/shm/{segment}")]
            title = (maps.parent / "cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if lines:
            found[title] = lines[0].split()[1]
    return found


def test_a_replica_on_the_routers_host_maps_the_input_itself(door: tuple[str, object], segments: callable, store: Path) -> None:
    # quiver serve's replicas share the router's /dev/shm: they are sent where the input lies, not its bytes.
    kind, client = door
    features = np.random.default_rng(5).standard_normal((ROWS, FEATURES)).astype(np.float32)
    key, handle = segments(features.nbytes + 4096)
    shm.set_shared_memory_region(handle, [features], offset=512)
    client.register_system_shared_memory("in", key, features.nbytes + 4096)
    triton = module(kind)
    tensor = triton.InferInput("input", [ROWS, FEATURES], "FP32")
    tensor.set_shared_memory("in", features.nbytes, 512)

    result = client.infer("example", [tensor])

    expected = reference(store / "example" / "1" / "model.onnx", {"input": features})["output"]
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-5, atol=1e-6)
    readers = mapped_by(key.lstrip("/"))
    assert [permissions for title, permissions in readers.items() if title.startswith("ray::ServeReplica")] == ["r--s"], readers


def test_a_region_resized_or_unregistered_meanwhile_is_refused_and_the_server_keeps_serving(
    door: tuple[str, object], segments: callable
) -> None:
    kind, client = door
    key, handle = registered_ones(client, segments, 8192)
    client.infer("example", example_request(kind, "in", 0, "in", 4096)[0])

    os.truncate(Path("/dev/shm") / key.lstrip("/"), 100)  # the client shrinks the segment under the registered region
    error = refused(lambda: client.infer("example", example_request(kind, "in", 0, "in", 4096)[0]))
    assert error.status() == STATUS[kind]["bad"] and "holds 100 bytes now" in error.message() and "resized" in error.message(), error

    client.unregister_system_shared_memory("in")
    error = refused(lambda: client.infer("example", example_request(kind, "in", 0, "in", 4096)[0]))
    assert error.status() == STATUS[kind]["bad"] and "unable to find system shared memory region: 'in'" in error.message(), error

    # Still serving, from a region registered again at the segment's new size.
    os.truncate(Path("/dev/shm") / key.lstrip("/"), 8192)
    shm.set_shared_memory_region(handle, [np.ones((ROWS, FEATURES), np.float32)])
    client.register_system_shared_memory("in", key, 8192)
    assert client.infer("example", example_request(kind, "in", 0, "in", 4096)[0]).as_numpy("output").shape == (ROWS, CLASSES)


async def echo(requests: list[InferenceRequest]) -> list[InferenceResult | Exception]:
    """A replica's `infer_many` that doubles input x."""
    return [InferenceResult({"y": request.inputs["x"] * 2}, len(requests), len(request.inputs["x"])) for request in requests]


def test_the_data_plane_sends_a_replica_sharing_dev_shm_where_an_input_lies_and_it_refuses_what_it_cannot_read(
    segments: callable,
) -> None:
    """Router and replica ends in this process (they share /dev/shm): an input viewed from a registered
    region travels as its segment, offset and size; the replica answers a slice it cannot read, shrunk
    or replaced since, with that request's own error, and the others in the call as usual."""
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    key, handle = segments(4096)
    shm.set_shared_memory_region(handle, [x], offset=64)
    regions = SharedMemory()
    regions.register("in", key, 0, 4096)

    def viewed() -> np.ndarray:  # as router/tensors.py decodes an input in shared memory: a view, no copy
        return np.frombuffer(regions.window(RegionRef("in", x.nbytes, 64), "input 'x'"), np.float32).reshape(x.shape)

    async def scenario() -> None:
        server = DataPlaneServer(echo)
        client = DataPlaneClient(Endpoint("m.1.a", "r1", await server.start("127.0.0.1"), server.token))
        try:
            [tensor] = encode_requests([InferenceRequest({"x": viewed()})], by_reference=True)[0].requests[0].inputs
            assert (tensor.data, tensor.segment.name, tensor.segment.offset, tensor.segment.byte_size) == (b"", key[1:], 64, x.nbytes)
            assert encode_requests([InferenceRequest({"x": viewed().copy()})], by_reference=True)[0].requests[0].inputs[0].data == x.tobytes()

            [answer] = await client.infer_many([InferenceRequest({"x": viewed()})])
            np.testing.assert_array_equal(answer.outputs["y"], x * 2)

            view = viewed()
            os.truncate(Path("/dev/shm") / key[1:], 100)  # shrunk after the router checked it
            shrunk, fine = await client.infer_many([InferenceRequest({"x": view}), InferenceRequest({"x": x})])
            assert isinstance(shrunk, InferenceError) and "holds 100 bytes now" in str(shrunk), shrunk
            np.testing.assert_array_equal(fine.outputs["y"], x * 2)

            # A region the replica has not read yet: its segment removed, and another made under its name.
            other, _ = segments(4096)
            regions.register("other", other, 0, 4096)
            view = np.frombuffer(regions.window(RegionRef("other", x.nbytes), "input 'x'"), np.float32).reshape(x.shape)
            os.unlink(Path("/dev/shm") / other[1:])
            os.close(os.open(Path("/dev/shm") / other[1:], os.O_CREAT | os.O_RDWR))  # the fixture's cleanup unlinks this one
            [replaced] = await client.infer_many([InferenceRequest({"x": view})])
            assert isinstance(replaced, InferenceError) and "removed or replaced" in str(replaced), replaced

            # Renamed over by what the replica must not open: a FIFO (opening it for reading would block
            # the replica's loop), a symbolic link (to a file whose inode may match); and a segment grown
            # past what the replica's address space can map.
            for name, swap, message in [
                ("fifo", lambda path: os.mkfifo(path), "not a regular file of /dev/shm"),
                ("link", lambda path: os.symlink("/etc/hostname", path), "a symbolic link, not a segment"),
                ("huge", lambda path: os.truncate(path, 1 << 47), "cannot be mapped here"),
            ]:
                segment, _ = segments(4096)
                regions.register(name, segment, 0, 4096)
                view = np.frombuffer(regions.window(RegionRef(name, x.nbytes), "input 'x'"), np.float32).reshape(x.shape)
                if name != "huge":
                    os.unlink(Path("/dev/shm") / segment[1:])
                swap(Path("/dev/shm") / segment[1:])
                refused, fine = await client.infer_many([InferenceRequest({"x": view}), InferenceRequest({"x": x})])
                assert isinstance(refused, InferenceError) and message in str(refused), (name, refused)
                np.testing.assert_array_equal(fine.outputs["y"], x * 2)
        finally:
            regions.unregister("")
            await client.close()
            await server.stop(0)

    asyncio.run(scenario())


def test_a_replica_lets_go_of_a_segment_its_client_unlinked_while_no_request_comes() -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    path = Path("/dev/shm") / f"quiver-test-{uuid.uuid4().hex[:12]}"
    path.write_bytes(x.tobytes())  # a segment this test makes itself: no other mapping of it here

    def mappings() -> int:
        return sum(line.endswith((str(path), f"{path} (deleted)")) for line in Path("/proc/self/maps").read_text().splitlines())

    async def scenario() -> None:
        server = DataPlaneServer(echo)
        client = DataPlaneClient(Endpoint("m.1.a", "r1", await server.start("127.0.0.1"), server.token))
        regions = SharedMemory()
        try:
            regions.register("in", f"/{path.name}", 0, x.nbytes)
            view = np.frombuffer(regions.window(RegionRef("in", x.nbytes), "input 'x'"), np.float32).reshape(x.shape)
            [answer] = await client.infer_many([InferenceRequest({"x": view})])
            np.testing.assert_array_equal(answer.outputs["y"], x * 2)
            del view
            regions.unregister("")
            assert mappings() == 1  # the replica's, kept for the next request
            path.unlink()
            for _ in range(200):  # the data plane sweeps once a second
                if not mappings():
                    break
                await asyncio.sleep(0.1)
            assert mappings() == 0
        finally:
            regions.unregister("")
            path.unlink(missing_ok=True)
            await client.close()
            await server.stop(0)

    asyncio.run(scenario())


def test_the_router_rechecks_a_segments_size_just_before_it_reads_or_writes_the_bytes(segments: callable) -> None:
    """A segment shrunk after the request was read: the router's copy of an input into a message to a
    replica elsewhere, and its write of an output, are refused for that request (touching the
    mapping past the segment's end would kill the router), not the process."""
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    key, handle = segments(4096)
    shm.set_shared_memory_region(handle, [x])
    regions = SharedMemory()
    regions.register("in", key, 0, 4096)
    try:
        window = regions.window(RegionRef("in", x.nbytes), "input 'x'")
        view = np.frombuffer(window, np.float32).reshape(x.shape)
        os.truncate(Path("/dev/shm") / key[1:], 100)
        message, unsent = encode_requests([InferenceRequest({"x": view}), InferenceRequest({"x": x})], by_reference=False)
        assert [request.inputs[0].data for request in message.requests] == [x.tobytes()]
        assert list(unsent) == [0] and "holds 100 bytes now" in str(unsent[0]), unsent
        with pytest.raises(InvalidArgument, match="output 'y': its shared memory segment holds 100 bytes now"):
            write(window, b"\0" * 8, "output 'y'", RegionRef("in", 8))
    finally:
        regions.unregister("")


def test_a_segment_name_that_is_no_regular_file_of_dev_shm_cannot_be_registered(segments: callable) -> None:
    key, _ = segments(4096)
    fifo, link = (f"/quiver-test-{uuid.uuid4().hex[:12]}" for _ in range(2))
    os.mkfifo(Path("/dev/shm") / fifo[1:])
    os.symlink(Path("/dev/shm") / key[1:], Path("/dev/shm") / link[1:])  # to a real segment: still refused
    regions = SharedMemory()
    try:
        for name, message in [(fifo, "not a regular file of /dev/shm"), (link, "a symbolic link, not a segment"),
                              ("/nul\0byte", "not the name of a shared memory segment")]:  # fmt: skip
            with pytest.raises(InvalidArgument, match=message):
                regions.register("r", name, 0, 64)
        assert regions.status("") == []
    finally:
        for name in (fifo, link):
            os.unlink(Path("/dev/shm") / name[1:])


def refused(call: callable) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as error:
        call()
    return error.value


def test_bad_regions_offsets_and_sizes_are_refused_and_the_server_keeps_serving(
    door: tuple[str, object], segments: callable
) -> None:
    kind, client = door
    key, handle = registered_ones(client, segments, 4096)
    bad = STATUS[kind]["bad"]

    cases = {
        "nowhere": (example_request(kind, "nowhere", 0, "in", 0), "unable to find system shared memory region: 'nowhere'"),
        "offset": (example_request(kind, "in", 3500, "in", 0), "runs past the end of shared memory region 'in' (4096 bytes)"),
        "output offset": (example_request(kind, "in", 0, "in", 4000), "output 'output': offset 4000 + byte_size 4096 runs past"),
    }
    for name, ((inputs, outputs), message) in cases.items():
        error = refused(lambda: client.infer("example", inputs, outputs=outputs))
        assert (error.status(), message in error.message()) == (bad, True), (name, error)

    # A byte size that does not hold the input's shape; an output region too small for the result.
    inputs, outputs = example_request(kind, "in", 0, "in", 0)
    inputs[0].set_shared_memory("in", 100)
    error = refused(lambda: client.infer("example", inputs, outputs=outputs))
    assert error.status() == bad and "shared memory region 'in' holds 100 bytes" in error.message(), error
    inputs, outputs = example_request(kind, "in", 0, "in", 0)
    outputs[0].set_shared_memory("in", 8)
    error = refused(lambda: client.infer("example", inputs, outputs=outputs))
    assert error.status() == bad and "byte_size 8 is too small for the 120 bytes" in error.message(), error

    error = refused(lambda: client.register_system_shared_memory("ghost", "/quiver-test-no-such-segment", 64))
    assert error.status() == bad and "unable to open shared memory segment" in error.message(), error
    error = refused(lambda: client.register_system_shared_memory("big", key, 4096, offset=1))
    assert error.status() == bad and "runs past the end of segment" in error.message(), error
    error = refused(lambda: client.register_system_shared_memory("dots", "/../etc/passwd", 64))
    assert error.status() == bad and "not the name of a shared memory segment" in error.message(), error
    error = refused(lambda: client.register_system_shared_memory("nul", "/a\0b", 64))
    assert error.status() == bad and "not the name of a shared memory segment" in error.message(), error
    link, fifo = (Path("/dev/shm") / f"quiver-test-{uuid.uuid4().hex[:12]}" for _ in range(2))
    link.symlink_to(Path("/dev/shm") / key[1:])  # renamed over a segment's name by a local client
    os.mkfifo(fifo)
    try:
        error = refused(lambda: client.register_system_shared_memory("link", f"/{link.name}", 64))
        assert error.status() == bad and "a symbolic link, not a segment" in error.message(), error
        error = refused(lambda: client.register_system_shared_memory("fifo", f"/{fifo.name}", 64))
        assert error.status() == bad and "not a regular file of /dev/shm" in error.message(), error
    finally:
        link.unlink()
        fifo.unlink()
    error = refused(lambda: client.register_system_shared_memory("in", key, 64))
    assert error.status() == STATUS[kind]["twice"] and "already registered" in error.message(), error
    error = refused(lambda: client.get_system_shared_memory_status("nowhere"))
    assert error.status() == STATUS[kind]["unknown"], error

    # Still serving, from the same region.
    inputs, outputs = example_request(kind, "in", 0, "in", 0)
    client.infer("example", inputs, outputs=outputs)
    assert shm.get_contents_as_numpy(handle, np.float32, [ROWS, CLASSES]).shape == (ROWS, CLASSES)


def test_cuda_shared_memory_cannot_be_registered_and_none_is(door: tuple[str, object]) -> None:
    kind, client = door
    error = refused(lambda: client.register_cuda_shared_memory("gpu", base64.b64encode(b"cudaIpcMemHandle"), 0, 64))
    assert error.status() == STATUS[kind]["unimplemented"] and "use system shared memory" in error.message(), error
    # None registered, none to report or forget: perf_analyzer unregisters CUDA regions on every run.
    status = client.get_cuda_shared_memory_status()
    assert (list(status.regions) if kind == "grpc" else status) == []
    client.unregister_cuda_shared_memory()
    error = refused(lambda: client.get_cuda_shared_memory_status("gpu"))
    assert error.status() == STATUS[kind]["unknown"], error
