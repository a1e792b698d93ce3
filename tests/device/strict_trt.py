"""A strict fake ``tensorrt`` (builder and runtime halves) and a fake CUDA binding.

Strict means: every public attribute read from the fake module or any object it hands
out is looked up in the name list of the real TensorRT release it imitates
(tests/device/trt_api/trt-<version>.txt, extracted from the real bindings wheel by
make_name_lists.py). A name the real release does not have raises AttributeError, as
the real module would -- a misspelt or removed API (``BuilderFlag.FP16`` on 11.x,
``EXPLICIT_BATCH`` on 11.x, ``STRONGLY_TYPED`` on 8.6) fails the test. Every name read
is recorded in ``FakeTrt.used`` for the names check.

The fake runtime "executes" a model as a numpy function on fake device memory, so the
backend's buffers, copies and output plumbing are checked end to end; knobs make
``execute_async_v3`` return False, at any call.
"""
from __future__ import annotations

import enum
import itertools
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import numpy as np

from legr_edge.device.backends.cuda_api import CudaApi, CudaError, DeviceProps

API_DIR = Path(__file__).resolve().parent / "trt_api"
VERSIONS = {"8.6": "8.6.1", "10.3": "10.3.0", "11.4": "11.4.0.106"}


class TrtNames:
    """The identifiers of one real TensorRT release (see make_name_lists.py for the caveat)."""

    def __init__(self, stem: str) -> None:
        lines = (API_DIR / f"trt-{stem}.txt").read_text().splitlines()
        self.stem = stem
        self.names: Set[str] = {ln for ln in lines if ln and not ln.startswith("#")}
        self._tails: Dict[str, bool] = {}

    def has(self, name: str) -> bool:
        if name in self.names:
            return True
        if name not in self._tails:  # tail-merged by the linker: "INT8" inside "UINT8"
            self._tails[name] = any(n.endswith(name) for n in self.names)
        return self._tails[name]


class Strict:
    """Base of every fake object: public attributes must exist in the real release."""

    _fake: "FakeTrt"

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_"):
            fake = object.__getattribute__(self, "_fake")
            fake._check(name)
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            self._fake._check(name)
            self._fake._log.append(("set", name, value))
        object.__setattr__(self, name, value)


class _Enum(Strict):
    """A TensorRT enum: members the release has (checked and recorded like any name)."""

    def __init__(self, fake: "FakeTrt", name: str, members: List[str]) -> None:
        object.__setattr__(self, "_fake", fake)
        kept = [m for m in members if fake._names.has(m)]
        values = enum.IntEnum(name, {m: i for i, m in enumerate(kept)})
        for m in values:
            object.__setattr__(self, m.name, m)


class _IInt8EntropyCalibrator2:
    """Base class the backend's calibrator derives from (TensorRT < 11)."""

    def __init__(self) -> None:
        pass


class FakeTrt(Strict):
    """The module object: ``trt = FakeTrt("10.3")``."""

    def __init__(self, stem: str, parse_ok: bool = True,
                 model: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                 out_shape: Tuple[int, ...] = (10,), execute_results: Optional[List[bool]] = None,
                 input_shape: Tuple[int, ...] = (3, 16, 16)) -> None:
        object.__setattr__(self, "_fake", self)
        self._names = TrtNames(stem)
        self._version = VERSIONS[stem]
        self._used: Set[str] = set()
        self._log: List[Tuple[str, str, Any]] = []
        self._parse_ok = parse_ok
        self._model = model or (lambda x: np.zeros((x.shape[0],) + out_shape, np.float32))
        self._out_shape = out_shape
        self._input_shape = input_shape
        self._execute_results = list(execute_results or [])
        self._memory: Dict[int, bytearray] = {}
        self._enums = {
            "BuilderFlag": _Enum(self, "BuilderFlag", ["FP16", "INT8", "GPU_FALLBACK"]),
            "NetworkDefinitionCreationFlag": _Enum(
                self, "NetworkDefinitionCreationFlag", ["EXPLICIT_BATCH", "STRONGLY_TYPED"]),
            "TensorIOMode": _Enum(self, "TensorIOMode", ["NONE", "INPUT", "OUTPUT"]),
            "MemoryPoolType": _Enum(self, "MemoryPoolType", ["WORKSPACE"]),
            "DeviceType": _Enum(self, "DeviceType", ["GPU", "DLA"]),
            "DataType": _Enum(self, "DataType", ["FLOAT", "HALF"]),
        }

    # bookkeeping: underscore names only, so that they never pass for TensorRT API
    def _check(self, name: str) -> None:
        if not self._names.has(name):
            raise AttributeError(f"TensorRT {self._version} has no attribute {name!r} "
                                 f"(strict fake, names from trt-{self._names.stem}.txt)")
        self._used.add(name)

    def _call(self, method: str, *args: Any) -> None:
        self._log.append(("call", method, args))

    # ----- the imitated module API ----------------------------------------------------------
    @property
    def __version__(self) -> str:
        return self._version

    def __getattr__(self, name: str) -> Any:  # enums and base classes
        self._check(name)
        if name in object.__getattribute__(self, "_enums"):
            return self._enums[name]
        if name == "IInt8EntropyCalibrator2":
            return _IInt8EntropyCalibrator2
        raise AttributeError(f"strict fake does not implement tensorrt.{name}")

    def nptype(self, dtype: Any) -> type:
        return np.float32 if dtype == self._enums["DataType"].FLOAT else np.float16

    @property
    def Logger(self) -> "_LoggerType":  # noqa: N802 (the real name)
        return _LoggerType(self)

    def Builder(self, logger: Any) -> "_Builder":  # noqa: N802
        return _Builder(self)

    def OnnxParser(self, network: Any, logger: Any) -> "_Parser":  # noqa: N802
        return _Parser(self)

    def Runtime(self, logger: Any) -> "_Runtime":  # noqa: N802
        return _Runtime(self)

    def _next_execute_result(self) -> bool:
        return self._execute_results.pop(0) if self._execute_results else True


def calls(fake: FakeTrt, method: str) -> List[Any]:
    """Arguments of every recorded call of ``method``, in order."""
    return [args for kind, m, args in fake._log if kind == "call" and m == method]


def settings(fake: FakeTrt, attr: str) -> List[Any]:
    """Values assigned to ``attr`` on any fake object, in order."""
    return [v for kind, m, v in fake._log if kind == "set" and m == attr]


class _Obj(Strict):
    def __init__(self, fake: FakeTrt) -> None:
        object.__setattr__(self, "_fake", fake)


class _LoggerType(_Obj):
    """``trt.Logger``: a class with severity constants; calling it makes a logger."""

    VERBOSE = 0
    WARNING = 2

    def __call__(self, severity: Any = None) -> "_Obj":
        return _Obj(self._fake)


class _Builder(_Obj):
    def create_network(self, flags: int = 0) -> "_Obj":
        self._fake._call("create_network", flags)
        return _Obj(self._fake)

    def create_builder_config(self) -> "_Config":
        return _Config(self._fake)

    def create_optimization_profile(self) -> "_OptProfile":
        return _OptProfile(self._fake)

    def build_serialized_network(self, network: Any, config: Any) -> bytes:
        self._fake._call("build_serialized_network")
        return b"ENGINE"


class _Parser(_Obj):
    def parse(self, data: bytes) -> bool:
        self._fake._call("parse", data)
        return self._fake._parse_ok

    @property
    def num_errors(self) -> int:
        return 0 if self._fake._parse_ok else 1

    def get_error(self, i: int) -> str:
        return "Unsupported operator Foo"


class _Config(_Obj):
    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self._fake._call("set_memory_pool_limit", pool, size)

    def set_flag(self, flag: Any) -> None:
        self._fake._call("set_flag", flag)

    def add_optimization_profile(self, p: Any) -> int:
        self._fake._call("add_optimization_profile", p)
        return 0

    def set_calibration_profile(self, p: Any) -> None:
        self._fake._call("set_calibration_profile", p)

    def create_timing_cache(self, blob: bytes) -> "_TimingCache":
        self._fake._call("create_timing_cache", blob)
        return _TimingCache(self._fake)

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
        return True

    def get_timing_cache(self) -> "_TimingCache":
        return _TimingCache(self._fake)


class _TimingCache(_Obj):
    def serialize(self) -> bytes:
        return b"TIMING"


class _OptProfile(_Obj):
    def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
        self._fake._call("set_shape", name, tuple(lo), tuple(opt), tuple(hi))


class _Runtime(_Obj):
    def deserialize_cuda_engine(self, blob: bytes) -> Optional["_Engine"]:
        self._fake._call("deserialize_cuda_engine", blob)
        return _Engine(self._fake) if blob == b"ENGINE" else None


class _Engine(_Obj):
    _io = ("input", "logits")

    @property
    def num_io_tensors(self) -> int:
        return 2

    def get_tensor_name(self, i: int) -> str:
        return self._io[i]

    def get_tensor_mode(self, name: str) -> Any:
        mode = self._fake._enums["TensorIOMode"]
        return mode.INPUT if name == "input" else mode.OUTPUT

    def get_tensor_dtype(self, name: str) -> Any:
        return self._fake._enums["DataType"].FLOAT

    def create_execution_context(self) -> "_Context":
        return _Context(self._fake)


class _Context(_Obj):
    def __init__(self, fake: FakeTrt) -> None:
        super().__init__(fake)
        self._batch = 1
        self._addr: Dict[str, int] = {}

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        self._fake._call("set_optimization_profile_async", index, stream)
        return True

    def set_input_shape(self, name: str, shape: Tuple[int, ...]) -> bool:
        self._batch = shape[0]
        return True

    def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
        tail = self._fake._input_shape if name == "input" else self._fake._out_shape
        return (self._batch,) + tuple(tail)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self._addr[name] = ptr
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        fake = self._fake
        fake._call("execute_async_v3", stream_handle)
        if not fake._next_execute_result():
            return False
        x = np.frombuffer(fake._memory[self._addr["input"]], np.float32).reshape(
            self.get_tensor_shape("input"))
        y = np.asarray(fake._model(x), np.float32)
        fake._memory[self._addr["logits"]][:] = y.tobytes()
        return True


class FakeCuda(CudaApi):
    """Our own CudaApi interface over host memory shared with a FakeTrt (no GPU).

    ``graphs`` toggles stream capture support; ``fail`` maps a method name to the
    CudaError it raises (e.g. {"begin_capture": "cudaErrorStreamCaptureUnsupported"}).
    """

    def __init__(self, trt: FakeTrt, graphs: bool = True, fail: Optional[Dict[str, str]] = None,
                 ms: float = 0.25) -> None:
        self.trt = trt
        self.name = "fake-cuda"
        self.graphs_supported = graphs
        self.fail = dict(fail or {})
        self.ms = ms
        self.calls: List[str] = []
        self.capturing: Set[int] = set()
        self._ids = itertools.count(1000, 1000)
        self.graphs: Dict[int, List[Callable[[], Any]]] = {}
        self.live_graphs: Set[int] = set()
        self.live_handles: Set[int] = set()  # streams and events not yet destroyed

    def _do(self, what: str) -> None:
        self.calls.append(what)
        if what in self.fail:
            raise CudaError(what, self.fail[what])

    def init(self) -> None:
        self._do("init")

    def device_count(self) -> int:
        return 1

    def device_props(self) -> DeviceProps:
        return DeviceProps("Orin", "8.7", 8, 7620)

    def stream(self) -> int:
        self.live_handles.add(next(self._ids))
        return max(self.live_handles)

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def synchronize(self, stream: Any) -> None:
        self._do("synchronize")

    def event(self) -> int:
        self.live_handles.add(next(self._ids))
        return max(self.live_handles)

    def destroy_event(self, event: Any) -> None:
        self.live_handles.remove(event)

    def destroy_stream(self, stream: Any) -> None:
        self.live_handles.remove(stream)

    def record(self, event: Any, stream: Any) -> None:
        self._do("record")

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self._do("elapsed_ms")
        return self.ms

    def malloc(self, nbytes: int) -> int:
        ptr = next(self._ids)
        self.trt._memory[ptr] = bytearray(nbytes)
        return ptr

    def pointer(self, mem: Any) -> int:
        return int(mem)

    def free(self, mem: Any) -> None:
        del self.trt._memory[mem]

    def host_empty(self, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype)

    def htod_async(self, mem: Any, host: np.ndarray, stream: Any) -> None:
        self.trt._memory[mem][:] = np.ascontiguousarray(host).tobytes()

    def dtoh_async(self, host: np.ndarray, mem: Any, stream: Any) -> None:
        host[...] = np.frombuffer(self.trt._memory[mem], host.dtype).reshape(host.shape)

    def begin_capture(self, stream: Any) -> None:
        self._do("begin_capture")
        self.capturing.add(stream)

    def end_capture(self, stream: Any) -> int:
        self.capturing.discard(stream)
        self._do("end_capture")
        graph = next(self._ids)
        self.live_graphs.add(graph)
        return graph

    def instantiate(self, graph: Any) -> int:
        self._do("instantiate")
        exe = next(self._ids)
        self.live_graphs.add(exe)
        return exe

    def launch(self, graph_exec: Any, stream: Any) -> None:
        self._do("launch")

    def destroy_graph(self, graph: Any) -> None:
        self.calls.append("destroy_graph")
        self.live_graphs.discard(graph)

    def destroy_graph_exec(self, graph_exec: Any) -> None:
        self.calls.append("destroy_graph_exec")
        self.live_graphs.discard(graph_exec)
