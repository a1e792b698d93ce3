"""The CUDA calls the TensorRT backend needs, behind one small interface.

Two implementations, because boards differ in what they have:

* :class:`CudaPython` -- NVIDIA's cuda-python (``cuda.bindings.runtime``, older
  releases ``cuda.cudart``), the CUDA runtime API. It has stream capture, so CUDA
  graphs really run: ``cudaStreamBeginCapture`` in thread-local mode, the enqueue,
  ``cudaStreamEndCapture``, ``cudaGraphInstantiate``, ``cudaGraphLaunch``.
* :class:`PyCuda` -- pycuda, what many JetPack 5 boards have. No released pycuda can
  capture a stream, so with pycuda CUDA graphs are *reported unavailable* (a warning
  in the results and ``cuda_graphs: false``), never silently replaced by plain enqueues.

Every cuda-python call returns a tuple whose first item is a ``cudaError_t``;
:func:`_check` turns a non-success code into :class:`CudaError` naming the call and
the error (without a GPU or driver that is ``cudaErrorInsufficientDriver``, which the
tests exercise through the real bindings).

Stream, event, graph and device pointers are plain handles (ints or binding objects)
that only this module interprets.
"""
from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)


class CudaError(RuntimeError):
    """A CUDA call failed; ``code`` is the error's name (e.g. cudaErrorInsufficientDriver)."""

    def __init__(self, call: str, code: str, message: str = "") -> None:
        super().__init__(f"{call} failed: {code}" + (f" ({message})" if message else ""))
        self.call = call
        self.code = code


@dataclass(frozen=True)
class DeviceProps:
    """What identifies a GPU for engine reuse: Orin Nano and AGX Orin are both 'Orin'."""

    name: str
    compute_capability: str  # "8.7"
    sm_count: int
    total_mem_mib: int

    def to_dict(self) -> dict:
        return {"name": self.name, "compute_capability": self.compute_capability,
                "sm_count": self.sm_count, "total_mem_mib": self.total_mem_mib}


class CudaApi:
    """Interface; see the module docstring. ``graphs_supported`` says if capture exists."""

    name = "none"
    graphs_supported = False

    def init(self) -> None:
        """Select device 0 and make its primary context current (the one TensorRT uses)."""
        raise NotImplementedError

    def close(self) -> None:
        """Undo :meth:`init` (pop a pushed context); safe to call twice."""

    def device_count(self) -> int:
        raise NotImplementedError

    def device_props(self) -> DeviceProps:
        raise NotImplementedError

    def versions(self) -> dict:
        return {}

    # streams and events
    def stream(self) -> Any:
        raise NotImplementedError

    def stream_handle(self, stream: Any) -> int:
        """The ``cudaStream_t`` as an int, as ``execute_async_v3`` wants it."""
        raise NotImplementedError

    def synchronize(self, stream: Any) -> None:
        raise NotImplementedError

    def destroy_stream(self, stream: Any) -> None:
        """Release a stream (no-op where the binding's object frees itself)."""

    def event(self) -> Any:
        raise NotImplementedError

    def destroy_event(self, event: Any) -> None:
        """Release an event (no-op where the binding's object frees itself)."""

    def record(self, event: Any, stream: Any) -> None:
        raise NotImplementedError

    def elapsed_ms(self, start: Any, end: Any) -> float:
        """Wait for ``end`` and return the ms between the two events (device clock)."""
        raise NotImplementedError

    # memory
    def malloc(self, nbytes: int) -> Any:
        raise NotImplementedError

    def pointer(self, mem: Any) -> int:
        raise NotImplementedError

    def free(self, mem: Any) -> None:
        raise NotImplementedError

    def host_empty(self, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Page-locked host array (fast, asynchronous copies)."""
        raise NotImplementedError

    def free_host(self, array: np.ndarray) -> None:
        """Release a :meth:`host_empty` array (no-op where the array owns its memory)."""

    def htod_async(self, mem: Any, host: np.ndarray, stream: Any) -> None:
        raise NotImplementedError

    def dtoh_async(self, host: np.ndarray, mem: Any, stream: Any) -> None:
        raise NotImplementedError

    # graphs
    def begin_capture(self, stream: Any) -> None:
        raise GraphsUnavailable(self.name)

    def end_capture(self, stream: Any) -> Any:
        raise GraphsUnavailable(self.name)

    def instantiate(self, graph: Any) -> Any:
        raise GraphsUnavailable(self.name)

    def launch(self, graph_exec: Any, stream: Any) -> None:
        raise GraphsUnavailable(self.name)

    def destroy_graph(self, graph: Any) -> None:
        """Free a captured (not instantiated) graph."""

    def destroy_graph_exec(self, graph_exec: Any) -> None:
        """Free an instantiated graph."""


class GraphsUnavailable(RuntimeError):
    """This CUDA binding cannot capture streams (pycuda)."""

    def __init__(self, binding: str) -> None:
        super().__init__(f"{binding} has no CUDA stream capture; install cuda-python "
                         f"(`pip install cuda-python`) for CUDA graphs")


# ----- capture, independent of the binding ------------------------------------------------
def capture_graph(cuda: CudaApi, stream: Any,
                  enqueue: Callable[[], bool]) -> Tuple[Optional[Any], str]:
    """Capture one ``enqueue()`` on ``stream`` into an instantiated CUDA graph.

    Returns ``(graph_exec, "")`` or ``(None, reason)``. Whatever fails, a begun capture
    is ended (so the stream leaves capture mode) and a half-made graph is destroyed; an
    enqueue that returns False (TensorRT's ``execute_async_v3`` on failure) discards
    the graph instead of replaying an empty one.
    """
    if not cuda.graphs_supported:
        return None, str(GraphsUnavailable(cuda.name))
    try:
        cuda.begin_capture(stream)
    except CudaError as e:
        return None, f"stream capture could not begin: {e}"
    graph, why = _enqueue_and_end(cuda, stream, enqueue)
    if graph is None:
        return None, why
    try:
        graph_exec = cuda.instantiate(graph)
    except CudaError as e:
        return None, f"graph instantiation failed: {e}"
    finally:
        cuda.destroy_graph(graph)
    return graph_exec, ""


def _enqueue_and_end(cuda: CudaApi, stream: Any,
                     enqueue: Callable[[], bool]) -> Tuple[Optional[Any], str]:
    """Run the enqueue inside the capture and always end the capture."""
    ok, why = False, ""
    try:
        ok = bool(enqueue())
        if not ok:
            why = "the enqueue returned False during capture"
    except Exception as e:  # must still end the capture below
        why = f"the enqueue raised during capture: {type(e).__name__}: {e}"
    try:
        graph = cuda.end_capture(stream)
    except CudaError as e:
        return None, why or f"stream capture failed: {e}"
    if not ok:
        cuda.destroy_graph(graph)
        return None, why
    return graph, ""


# ----- cuda-python ---------------------------------------------------------------------------
def _import_cudart() -> Any:
    """``cuda.bindings.runtime`` (cuda-python >= 12.6), else the older ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime
        return runtime
    except ImportError:
        from cuda import cudart  # cuda-python 11.8 .. 12.5
        return cudart


def _check(result: Any, call: str, rt: Any) -> Any:
    """Unpack a cuda-python result tuple; raise CudaError unless it is cudaSuccess."""
    err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if err != rt.cudaError_t.cudaSuccess:
        name = getattr(err, "name", str(err))
        msg = rt.cudaGetErrorString(err)
        text = msg[1].decode("utf-8", "replace") if isinstance(msg, tuple) and len(msg) > 1 and \
            isinstance(msg[1], bytes) else ""
        raise CudaError(call, name, text)
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


class CudaPython(CudaApi):
    """cuda-python's runtime API; see the module docstring."""

    name = "cuda-python"
    graphs_supported = True

    def __init__(self) -> None:
        self.rt = _import_cudart()

    def _call(self, fn: str, *args: Any) -> Any:
        return _check(getattr(self.rt, fn)(*args), fn, self.rt)

    def init(self) -> None:
        if self.device_count() < 1:
            raise CudaError("cudaGetDeviceCount", "no CUDA device visible")
        self._call("cudaSetDevice", 0)
        self._call("cudaFree", 0)  # forces the primary context into existence

    def device_count(self) -> int:
        return int(self._call("cudaGetDeviceCount"))

    def device_props(self) -> DeviceProps:
        p = self._call("cudaGetDeviceProperties", 0)
        name = p.name.decode("utf-8", "replace").rstrip("\x00") if isinstance(p.name, bytes) \
            else str(p.name)
        return DeviceProps(name, f"{p.major}.{p.minor}", int(p.multiProcessorCount),
                           int(p.totalGlobalMem) >> 20)

    def versions(self) -> dict:
        out = {}
        for key, fn in (("cuda_driver", "cudaDriverGetVersion"),
                        ("cuda_runtime", "cudaRuntimeGetVersion")):
            try:
                out[key] = int(self._call(fn))
            except CudaError:
                continue
        return out

    def stream(self) -> Any:
        # A non-blocking stream: capture is not allowed on the legacy default stream.
        return self._call("cudaStreamCreateWithFlags", self.rt.cudaStreamNonBlocking)

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def synchronize(self, stream: Any) -> None:
        self._call("cudaStreamSynchronize", stream)

    def destroy_stream(self, stream: Any) -> None:
        self._call("cudaStreamDestroy", stream)

    def event(self) -> Any:
        return self._call("cudaEventCreate")

    def destroy_event(self, event: Any) -> None:
        self._call("cudaEventDestroy", event)

    def record(self, event: Any, stream: Any) -> None:
        self._call("cudaEventRecord", event, stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self._call("cudaEventSynchronize", end)
        return float(self._call("cudaEventElapsedTime", start, end))

    def malloc(self, nbytes: int) -> Any:
        return self._call("cudaMalloc", max(1, nbytes))

    def pointer(self, mem: Any) -> int:
        return int(mem)

    def free(self, mem: Any) -> None:
        self._call("cudaFree", mem)

    def host_empty(self, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
        ptr = int(self._call("cudaMallocHost", nbytes))
        buf = (ctypes.c_byte * nbytes).from_address(ptr)
        arr = np.frombuffer(buf, dtype=np.uint8)[: int(np.prod(shape)) * dtype.itemsize]
        return arr.view(dtype).reshape(shape)

    def free_host(self, array: np.ndarray) -> None:
        self._call("cudaFreeHost", array.ctypes.data)

    def htod_async(self, mem: Any, host: np.ndarray, stream: Any) -> None:
        self._call("cudaMemcpyAsync", mem, host.ctypes.data, host.nbytes,
                   self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)

    def dtoh_async(self, host: np.ndarray, mem: Any, stream: Any) -> None:
        self._call("cudaMemcpyAsync", host.ctypes.data, mem, host.nbytes,
                   self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)

    def begin_capture(self, stream: Any) -> None:
        # Thread-local mode: other threads' unsafe CUDA calls do not break our capture.
        self._call("cudaStreamBeginCapture", stream,
                   self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)

    def end_capture(self, stream: Any) -> Any:
        return self._call("cudaStreamEndCapture", stream)

    def instantiate(self, graph: Any) -> Any:
        # cudaGraphInstantiateWithFlags(graph, flags) -> (err, exec) in every cuda-python
        # since CUDA 11.4; plain cudaGraphInstantiate took a log buffer before CUDA 12.
        if hasattr(self.rt, "cudaGraphInstantiateWithFlags"):
            return self._call("cudaGraphInstantiateWithFlags", graph, 0)
        return self._call("cudaGraphInstantiate", graph, 0)

    def launch(self, graph_exec: Any, stream: Any) -> None:
        self._call("cudaGraphLaunch", graph_exec, stream)

    def destroy_graph(self, graph: Any) -> None:
        self._call("cudaGraphDestroy", graph)

    def destroy_graph_exec(self, graph_exec: Any) -> None:
        self._call("cudaGraphExecDestroy", graph_exec)


# ----- pycuda ------------------------------------------------------------------------------------
class PyCuda(CudaApi):
    """pycuda's driver API wrapper: everything but stream capture (graphs unavailable)."""

    name = "pycuda"
    graphs_supported = False

    def __init__(self) -> None:
        import pycuda.driver as drv
        self.drv = drv
        self._ctx = None

    def init(self) -> None:
        self.drv.init()
        if self.drv.Device.count() < 1:
            raise CudaError("cuDeviceGetCount", "no CUDA device visible")
        self._dev = self.drv.Device(0)
        self._ctx = self._dev.retain_primary_context()  # the context TensorRT's runtime uses
        self._ctx.push()

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.pop()
            self._ctx = None

    def device_count(self) -> int:
        self.drv.init()
        return int(self.drv.Device.count())

    def device_props(self) -> DeviceProps:
        d = self._dev
        attr = self.drv.device_attribute
        return DeviceProps(d.name(), ".".join(map(str, d.compute_capability())),
                           int(d.get_attribute(attr.MULTIPROCESSOR_COUNT)),
                           int(d.total_memory()) >> 20)

    def versions(self) -> dict:
        return {"cuda_driver": int(self.drv.get_driver_version()),
                "pycuda_built_for": ".".join(map(str, self.drv.get_version()))}

    def stream(self) -> Any:
        return self.drv.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def event(self) -> Any:
        return self.drv.Event()

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(start.time_till(end))

    def malloc(self, nbytes: int) -> Any:
        return self.drv.mem_alloc(max(1, nbytes))

    def pointer(self, mem: Any) -> int:
        return int(mem)

    def free(self, mem: Any) -> None:
        mem.free()

    def host_empty(self, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self.drv.pagelocked_empty(shape, dtype)

    def htod_async(self, mem: Any, host: np.ndarray, stream: Any) -> None:
        self.drv.memcpy_htod_async(mem, host, stream)

    def dtoh_async(self, host: np.ndarray, mem: Any, stream: Any) -> None:
        self.drv.memcpy_dtoh_async(host, mem, stream)


def load_cuda_api() -> CudaApi:
    """cuda-python if importable (graphs), else pycuda; ImportError names both."""
    try:
        return CudaPython()
    except ImportError:
        pass
    try:
        return PyCuda()
    except ImportError:
        raise ImportError("neither cuda-python nor pycuda can be imported") from None
