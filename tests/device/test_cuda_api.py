"""The CUDA graph capture path: real cuda-python calls (no GPU here) and the failure handling.

cuda-python installs on a machine without a GPU and its runtime calls then return
cudaErrorInsufficientDriver (or cudaErrorNoDevice): these tests make the real calls the
backend makes -- device count, stream capture begin/end, instantiate, launch -- and
check that their errors come back as CudaError naming the call and the code, and that
``capture_graph`` turns them into "graphs not used, because ..." instead of a crash.
On a machine with a GPU the same calls succeed and the capture test replays a graph.
"""
from __future__ import annotations

import pytest

from legr_edge.device.backends.cuda_api import (CudaApi, CudaError, CudaPython, PyCuda,
                                                capture_graph, load_cuda_api)
from tests.device.strict_trt import FakeCuda, FakeTrt

NO_GPU_CODES = ("cudaErrorInsufficientDriver", "cudaErrorNoDevice")


@pytest.fixture(scope="module")
def cudart() -> CudaPython:
    try:
        return CudaPython()
    except ImportError:
        pytest.skip("cuda-python is not installed (pip install cuda-python): the real CUDA "
                    "runtime calls cannot be exercised")


def _has_gpu(api: CudaPython) -> bool:
    try:
        return api.device_count() > 0
    except CudaError:
        return False


def test_real_calls_report_the_missing_driver(cudart: CudaPython) -> None:
    if _has_gpu(cudart):
        pytest.skip("a GPU is present: the no-driver errors cannot be observed")
    with pytest.raises(CudaError) as e:
        cudart.init()
    assert e.value.code in NO_GPU_CODES and e.value.call == "cudaGetDeviceCount"
    with pytest.raises(CudaError) as e:
        cudart.begin_capture(0)
    assert e.value.call == "cudaStreamBeginCapture" and e.value.code in NO_GPU_CODES
    with pytest.raises(CudaError, match="cudaStreamEndCapture"):
        cudart.end_capture(0)
    with pytest.raises(CudaError, match="cudaStreamCreateWithFlags"):
        cudart.stream()
    assert "cuda_runtime" in cudart.versions()  # answers without a driver


def test_real_capture_path_degrades_to_a_reason(cudart: CudaPython) -> None:
    """capture_graph through the real binding: begin fails here, the enqueue never runs."""
    if _has_gpu(cudart):
        cudart.init()
        stream = cudart.stream()
        graph, why = capture_graph(cudart, stream, lambda: True)  # an empty capture
        assert graph is not None and why == ""
        cudart.launch(graph, stream)
        cudart.synchronize(stream)
        cudart.destroy_graph_exec(graph)
        return
    ran = []
    graph, why = capture_graph(cudart, 0, lambda: ran.append(1) or True)
    assert graph is None and not ran
    assert "could not begin" in why and any(c in why for c in NO_GPU_CODES)


def test_real_backend_reports_cuda_unusable(cudart: CudaPython, monkeypatch) -> None:
    """check_available through the real cuda-python: a clear BackendUnavailable, no traceback."""
    import sys
    import types
    from legr_edge.device.backends import get_backend
    from legr_edge.device.backends.base import BackendUnavailable
    from legr_edge.device.profiles import load_profile
    if _has_gpu(cudart):
        pytest.skip("a GPU is present")
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    with pytest.raises(BackendUnavailable, match="CUDA is not usable here.*cudaError.*cpu-ort"):
        get_backend("tensorrt").check_available(load_profile("jetson-orin-nano"))


def test_load_prefers_cuda_python(cudart: CudaPython) -> None:
    assert isinstance(load_cuda_api(), CudaPython) and CudaPython.graphs_supported
    assert PyCuda.graphs_supported is False


def _fake(**kw) -> FakeCuda:
    return FakeCuda(FakeTrt("10.3"), **kw)


def test_capture_success_instantiates_and_frees_the_graph() -> None:
    cuda = _fake()
    graph, why = capture_graph(cuda, 1, lambda: True)
    assert graph is not None and why == ""
    assert cuda.calls == ["begin_capture", "end_capture", "instantiate", "destroy_graph"]
    assert cuda.live_graphs == {graph}  # only the executable graph is left


def test_enqueue_false_ends_capture_and_discards() -> None:
    cuda = _fake()
    graph, why = capture_graph(cuda, 1, lambda: False)
    assert graph is None and "returned False" in why
    assert cuda.calls == ["begin_capture", "end_capture", "destroy_graph"] and not cuda.capturing
    assert not cuda.live_graphs


def test_enqueue_exception_still_ends_capture() -> None:
    cuda = _fake()

    def boom() -> bool:
        raise ValueError("bad binding")

    graph, why = capture_graph(cuda, 1, boom)
    assert graph is None and "ValueError: bad binding" in why and not cuda.capturing


def test_end_capture_error_and_instantiate_error() -> None:
    cuda = _fake(fail={"end_capture": "cudaErrorStreamCaptureInvalidated"})
    graph, why = capture_graph(cuda, 1, lambda: True)
    assert graph is None and "cudaErrorStreamCaptureInvalidated" in why
    cuda = _fake(fail={"instantiate": "cudaErrorInvalidValue"})
    graph, why = capture_graph(cuda, 1, lambda: True)
    assert graph is None and "instantiation failed" in why and not cuda.live_graphs


def test_binding_without_capture_is_reported_not_skipped() -> None:
    class NoCapture(CudaApi):
        name = "pycuda"

    graph, why = capture_graph(NoCapture(), 1, lambda: True)
    assert graph is None and "pycuda has no CUDA stream capture" in why and "cuda-python" in why
