"""TensorRT backend, the GPU runtime half: load or build the engine, run and time it.

Build decisions (version branches, flags, cache keys, the build itself) live in
:mod:`.tensorrt_build`; CUDA calls go through :mod:`.cuda_api` (cuda-python, or pycuda
where that is what the board has). One optimisation profile per batch size
(min = opt = max); an execution context selects its batch size's profile.

What a timing sample measures (``info()["measures"]``, the profile's ``timing_mode``):

* ``latency`` (default): one inference in flight. Host clock around one enqueue (or
  CUDA graph launch) and the wait for it: what a synchronous application sees,
  including the time the CPU needs to enqueue the kernels -- large on a slow ARM core
  and what CUDA graphs cut. Input already on the GPU, no H2D/D2H copies.
* ``throughput``: as trtexec does, the next inference is enqueued before the previous
  one is waited for (two in flight on one stream), so the GPU never idles on the host.
  Samples are CUDA-event times of each inference: GPU compute time; images/s follow.

Every ``execute_async_v3`` result is checked: False (a failed enqueue) raises instead of
yielding a microsecond "latency". With ``cuda_graphs = true`` each context's enqueue is
captured once (cuda-python only; pycuda cannot capture) and replayed; a failed capture
is ended and discarded, and the results say whether graphs were used and why not.

``tensorrt`` and the CUDA binding are imported only inside this module's functions.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from legr_edge.device import fp16
from legr_edge.device.backends.base import Backend, BackendUnavailable, missing_dependency
from legr_edge.device.backends.cuda_api import CudaApi, capture_graph, load_cuda_api
from legr_edge.device.backends.tensorrt_build import (  # noqa: F401 (re-exported)
    BuildPlan, build_engine_bytes, check_opset, check_trt_version, device_identity,
    engine_cache_key, engine_file, network_flag_bits, parse_version, plan_build,
    timing_cache_file, timing_cache_key)
from legr_edge.device.fingerprint import device_tree_model
from legr_edge.device.onnx_info import inspect_onnx
from legr_edge.device.profiles import Profile
from legr_edge.io import write_bytes, write_json

log = logging.getLogger(__name__)

TRT_HOW = ("`pip install legr_edge[trt]` (desktop/server GPU: tensorrt + cuda-python) or, on "
           "a Jetson, JetPack's `python3-libnvinfer` plus `pip install legr_edge[jetson]` "
           "(cuda-python; pycuda also works, without CUDA graphs)")
CALIBRATION_IMAGES = 256
MEASURES = {
    "latency": "host latency: perf_counter around one enqueue (or CUDA graph launch) plus the "
               "wait for it, one inference in flight, input already on the GPU (no H2D/D2H)",
    "throughput": "GPU compute time: CUDA events around each inference while the next one is "
                  "already enqueued (two in flight on one stream, as trtexec); no H2D/D2H",
}


def _import_trt(profile: Profile) -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise missing_dependency("tensorrt", profile, TRT_HOW) from None
    return trt


def _import_cuda(profile: Profile) -> CudaApi:
    try:
        return load_cuda_api()
    except ImportError:
        raise missing_dependency("cuda-python (or pycuda)", profile, TRT_HOW) from None


@dataclass
class _Slot:
    """Execution context, stream, events and buffers for one batch size."""

    context: Any
    stream: Any
    events: List[Tuple[Any, Any]]  # (start, end) pairs: one per inference in flight
    host: Dict[str, np.ndarray]
    device: Dict[str, Any]
    graph: Any = None
    in_flight: List[int] = field(default_factory=list)  # indices into events, oldest first


class TensorRTBackend(Backend):
    """TensorRT engine on the GPU; see the module docstring for what ``step`` measures."""

    name = "tensorrt"

    @classmethod
    def check_available(cls, profile: Profile) -> None:
        trt = _import_trt(profile)
        check_trt_version(trt.__version__, profile.name)
        if parse_version(trt.__version__)[0] >= 11 and profile.precision == "fp16" \
                and not fp16.converter_available():
            raise BackendUnavailable(
                f"profile {profile.name!r} asks for fp16; TensorRT {trt.__version__} has no FP16 "
                f"builder flag, so the ONNX is converted to FP16 on this device, which needs "
                f"onnxconverter-common: {fp16.HOW}")
        cuda = _import_cuda(profile)
        try:
            cuda.init()
        except Exception as e:  # no driver, no device
            raise BackendUnavailable(f"profile {profile.name!r}: CUDA is not usable here ({e}); "
                                     f"profile with --profile cpu-ort instead") from None
        finally:
            cuda.close()

    # ----- activate: engine ------------------------------------------------------------
    def activate_impl(self) -> None:
        trt = self._trt = _import_trt(self.profile)
        check_trt_version(trt.__version__, self.profile.name)
        self._cuda = _import_cuda(self.profile)
        self._cuda.init()
        self._props = self._cuda.device_props()
        self._device_name = device_identity(self._props.to_dict(), device_tree_model())
        self._logger = trt.Logger(trt.Logger.VERBOSE if log.isEnabledFor(logging.DEBUG)
                                  else trt.Logger.WARNING)
        info = inspect_onnx(self.spec.onnx_path)
        check_opset(info.opset, trt.__version__)
        self._plan = plan_build(trt.__version__, self.profile.precision, info.float_type,
                                info.has_qdq, self.profile.dla_core >= 0)
        for note in self._plan.notes:
            self.warn(note)
        self._slots: Dict[int, _Slot] = {}
        self._graph_problem: Optional[str] = None
        self._engine = self._load_or_build()
        self._io = self._io_names()

    def _cache_dir(self) -> Path:
        if self.spec.cache_dir is None:
            raise RuntimeError("TensorRT backend needs a cache_dir (RUN/engines/<profile>)")
        self.spec.cache_dir.mkdir(parents=True, exist_ok=True)
        return self.spec.cache_dir

    def _load_or_build(self) -> Any:
        """Deserialize a cached engine if its key matches, else build (and cache) one."""
        trt, p = self._trt, self.profile
        key = engine_cache_key(self.spec.onnx_sha256, trt.__version__, self._device_name,
                               self._plan.precision, p.batch_sizes, p.workspace_mib, p.dla_core)
        self._engine_path = engine_file(self._cache_dir(), self.spec.name, key)
        self._runtime = trt.Runtime(self._logger)
        if self._engine_path.is_file():
            engine = self._runtime.deserialize_cuda_engine(self._engine_path.read_bytes())
            if engine is not None:
                log.info("%s: reusing engine %s", self.spec.name, self._engine_path.name)
                self._engine_reused = True
                return engine
            self.warn(f"cached engine {self._engine_path.name} does not deserialize; rebuilding")
        self._engine_reused = False
        engine = self._runtime.deserialize_cuda_engine(self._build(key))
        if engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine it just built")
        return engine

    def _onnx_for_build(self) -> Path:
        """The ONNX the parser reads: the run's file, or its FP16 conversion (TensorRT 11+)."""
        if not self._plan.convert_fp16:
            return self.spec.onnx_path
        dst = self._cache_dir() / f"{self.spec.name}.{self.spec.onnx_sha256[:16]}.fp16.onnx"
        if not dst.is_file():
            fp16.convert_to_fp16(self.spec.onnx_path, dst)
        return dst

    def _build(self, key: str) -> bytes:
        trt = self._trt
        tkey = timing_cache_key(trt.__version__, self._device_name, self._plan.precision)
        tpath = timing_cache_file(self._cache_dir(), tkey)
        old_cache = tpath.read_bytes() if tpath.is_file() else None
        onnx_path = self._onnx_for_build()
        log.info("%s: building TensorRT %s engine (%s)...", self.spec.name, trt.__version__,
                 self._plan.precision)
        engine, cache = build_engine_bytes(
            trt, self._logger, onnx_path.read_bytes(), self._plan, self.profile,
            self.spec.input_name, self.spec.input_shape, old_cache, self._calibrator_factory())
        write_bytes(self._engine_path, engine)
        write_bytes(tpath, cache)
        write_json(self._engine_path.with_suffix(".json"), {
            "key": key, "onnx_sha256": self.spec.onnx_sha256, "onnx_built": onnx_path.name,
            "tensorrt": trt.__version__, "device": self._device_name,
            "plan": self._plan.to_dict(), "profile": self.profile.to_dict()})
        return engine

    def _calibrator_factory(self) -> Optional[Callable[[int], Any]]:
        if not self._plan.calibrate or self.spec.calibration is None:
            return None
        data = np.ascontiguousarray(self.spec.calibration[:CALIBRATION_IMAGES], dtype=np.float32)
        cache = self._cache_dir() / f"{self.spec.name}.{self.spec.onnx_sha256[:16]}.calib"
        return lambda batch: _make_calibrator(self._trt, self._cuda, data, batch, cache)

    def _io_names(self) -> Tuple[str, str]:
        trt, e = self._trt, self._engine
        names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
        inputs = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) < 1:
            raise RuntimeError(f"expected 1 input and >= 1 output, engine has {inputs} / {outputs}")
        return inputs[0], outputs[0]

    # ----- contexts and buffers ------------------------------------------------------------
    def _slot(self, batch: int) -> _Slot:
        """Context bound to this batch size's optimisation profile, with stream and buffers."""
        if batch in self._slots:
            return self._slots[batch]
        if batch not in self.profile.batch_sizes:
            raise ValueError(f"batch {batch} has no optimisation profile "
                             f"(profile batch_sizes: {list(self.profile.batch_sizes)})")
        trt, cuda, e = self._trt, self._cuda, self._engine
        stream = cuda.stream()
        ctx = e.create_execution_context()
        ctx.set_optimization_profile_async(self.profile.batch_sizes.index(batch),
                                           cuda.stream_handle(stream))
        ctx.set_input_shape(self._io[0], (batch,) + tuple(self.spec.input_shape))
        slot = _Slot(ctx, stream, [(cuda.event(), cuda.event()) for _ in range(2)], {}, {})
        self._slots[batch] = slot  # registered first: deactivate frees a half-made slot too
        for name in (e.get_tensor_name(i) for i in range(e.num_io_tensors)):
            shape = tuple(ctx.get_tensor_shape(name))
            slot.host[name] = cuda.host_empty(shape, np.dtype(trt.nptype(e.get_tensor_dtype(name))))
            slot.device[name] = cuda.malloc(slot.host[name].nbytes)
            ctx.set_tensor_address(name, cuda.pointer(slot.device[name]))
        return slot

    def _execute(self, slot: _Slot) -> None:
        """One enqueue of the context; TensorRT reports failure by returning False."""
        if not slot.context.execute_async_v3(self._cuda.stream_handle(slot.stream)):
            raise RuntimeError("execute_async_v3 returned False: TensorRT could not enqueue "
                               "the inference (run with -v for its log)")

    def _enqueue(self, slot: _Slot) -> None:
        if slot.graph is not None:
            self._cuda.launch(slot.graph, slot.stream)
        else:
            self._execute(slot)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        cuda = self._cuda
        slot = self._slot(x.shape[0])
        self._drain(slot)
        in_name, out_name = self._io
        slot.host[in_name][...] = x.astype(slot.host[in_name].dtype)
        cuda.htod_async(slot.device[in_name], slot.host[in_name], slot.stream)
        self._execute(slot)
        cuda.dtoh_async(slot.host[out_name], slot.device[out_name], slot.stream)
        cuda.synchronize(slot.stream)
        return slot.host[out_name].astype(np.float32).reshape(x.shape[0], -1)

    # ----- timing --------------------------------------------------------------------------
    def prepare_impl(self, batch_size: int) -> None:
        slot = self._slot(batch_size)
        self._drain(slot)
        in_name = self._io[0]
        rng = np.random.default_rng(0)
        slot.host[in_name][...] = rng.standard_normal(slot.host[in_name].shape)
        self._cuda.htod_async(slot.device[in_name], slot.host[in_name], slot.stream)
        self._execute(slot)  # the first run does lazy setup
        self._cuda.synchronize(slot.stream)
        if self.profile.cuda_graphs and slot.graph is None:
            self._capture(slot)
        self._current = slot
        if self.profile.timing_mode == "throughput":
            self._launch_timed(slot)  # one in flight before the first step

    def _capture(self, slot: _Slot) -> None:
        """Capture the enqueue into a CUDA graph and replay it once; on failure say why."""
        cuda = self._cuda
        graph, why = capture_graph(cuda, slot.stream, lambda: slot.context.execute_async_v3(
            cuda.stream_handle(slot.stream)))
        if graph is not None:
            try:
                cuda.launch(graph, slot.stream)  # one trial replay before trusting it for timing
                cuda.synchronize(slot.stream)
                slot.graph = graph
                return
            except Exception as e:
                cuda.destroy_graph_exec(graph)
                why = f"the trial replay failed: {type(e).__name__}: {e}"
        if self._graph_problem is None:
            self._graph_problem = why
            self.warn(f"cuda_graphs = true but CUDA graphs are NOT used: {why}; "
                      f"timing plain execute_async_v3 instead")

    def _launch_timed(self, slot: _Slot) -> None:
        free = next(i for i in range(len(slot.events)) if i not in slot.in_flight)
        start, end = slot.events[free]
        self._cuda.record(start, slot.stream)
        self._enqueue(slot)
        self._cuda.record(end, slot.stream)
        slot.in_flight.append(free)

    def _drain(self, slot: _Slot) -> None:
        """Wait for inferences still in flight (throughput mode) and forget them."""
        if slot.in_flight:
            self._cuda.synchronize(slot.stream)
            slot.in_flight.clear()

    def step_impl(self) -> Optional[float]:
        slot = self._current
        if self.profile.timing_mode == "throughput":
            self._launch_timed(slot)  # now two in flight
            start, end = slot.events[slot.in_flight.pop(0)]
            return self._cuda.elapsed_ms(start, end)
        self._enqueue(slot)
        self._cuda.synchronize(slot.stream)
        return None  # host-timed by the timing loop: enqueue + wait

    # ----- deactivate and info -------------------------------------------------------------
    def deactivate_impl(self) -> None:
        """Free in dependency order (graphs, contexts, buffers, engine), then release CUDA."""
        cuda = getattr(self, "_cuda", None)
        try:
            for slot in getattr(self, "_slots", {}).values():
                _free_slot(cuda, slot)
            self._slots = {}
            self._current = None
            self._engine = None
            self._runtime = None
        finally:
            if cuda is not None:
                cuda.close()

    @property
    def engine_path(self) -> Optional[Path]:
        return getattr(self, "_engine_path", None)

    def info_impl(self) -> Dict[str, Any]:
        plan = getattr(self, "_plan", None)
        cuda = getattr(self, "_cuda", None)
        props = getattr(self, "_props", None)
        return {
            "precision": plan.precision if plan else self.profile.precision,
            "precision_requested": self.profile.precision,
            "providers": ["TensorRT"],
            "device_name": getattr(self, "_device_name", None),
            "gpu": props.to_dict() if props else None,
            "engine_path": str(self.engine_path) if self.engine_path else None,
            "engine_reused": getattr(self, "_engine_reused", None),
            "build_plan": plan.to_dict() if plan else None,
            "onnx_converted_to_fp16": bool(plan and plan.convert_fp16),
            "cuda_binding": cuda.name if cuda else None,
            "cuda_graphs_requested": self.profile.cuda_graphs,
            "cuda_graphs": any(s.graph is not None for s in getattr(self, "_slots", {}).values()),
            "cuda_graphs_problem": getattr(self, "_graph_problem", None),
            "versions": {"tensorrt": getattr(getattr(self, "_trt", None), "__version__", None),
                         **(cuda.versions() if cuda and props else {})},
            "timing_mode": self.profile.timing_mode,
            "measures": MEASURES[self.profile.timing_mode],
            "timing": MEASURES[self.profile.timing_mode],
        }


def _free_slot(cuda: Optional[CudaApi], slot: _Slot) -> None:
    """Best effort: wait for the stream, then release graph, context and memory."""
    if cuda is None:
        return
    try:
        cuda.synchronize(slot.stream)
    except Exception as e:
        log.debug("stream sync at teardown: %s", e)
    if slot.graph is not None:
        cuda.destroy_graph_exec(slot.graph)
        slot.graph = None
    slot.context = None
    for mem in slot.device.values():
        cuda.free(mem)
    for arr in slot.host.values():
        cuda.free_host(arr)
    for start, end in slot.events:
        cuda.destroy_event(start)
        cuda.destroy_event(end)
    cuda.destroy_stream(slot.stream)
    slot.device, slot.host, slot.events = {}, {}, []


def _make_calibrator(trt: Any, cuda: CudaApi, data: np.ndarray, batch: int, cache: Path) -> Any:
    """INT8 entropy calibrator over preprocessed eval images (TensorRT < 11 only)."""

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._next = 0
            self._stream = cuda.stream()
            self._mem = cuda.malloc(data[:batch].nbytes)

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: List[str]) -> Optional[List[int]]:
            if self._next + batch > len(data):
                return None
            cuda.htod_async(self._mem, np.ascontiguousarray(data[self._next:self._next + batch]),
                            self._stream)
            cuda.synchronize(self._stream)
            self._next += batch
            return [cuda.pointer(self._mem)]

        def read_calibration_cache(self) -> Optional[bytes]:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, blob: Any) -> None:
            write_bytes(cache, bytes(blob))

    return _Calibrator()
