"""TensorRT backend: build an engine from the ONNX file, time it with CUDA events.

Written against the TensorRT 10 Python API (Jetson Orin: JetPack 6 = TensorRT 10.3)
and branches on the major version:

* TensorRT 8.x (JetPack 5): networks must be created with ``EXPLICIT_BATCH``.
* TensorRT 10: weakly typed network; ``BuilderFlag.FP16`` / ``BuilderFlag.INT8``
  enable reduced precision (INT8 without Q/DQ nodes is calibrated on eval images).
* TensorRT 11+: the precision flags are gone. The network is created strongly
  typed and the engine runs in the precision of the ONNX types; an FP32 ONNX with
  an ``fp16`` profile gives an FP32 engine and a warning that says how to convert
  (ModelOpt AutoCast) -- we never pretend it is FP16.

One optimisation profile per batch size (min = opt = max), so each batch size gets
tactics tuned for exactly that shape; contexts select their profile.

Engines and the timing cache live in ``RUN/engines/<profile>/`` and are reused when
the cache key matches: ONNX sha256, TensorRT version, GPU name, precision and the
build settings. The key logic is pure and unit-tested with a fake ``tensorrt``.

Timing: CUDA events recorded on our stream around ``execute_async_v3`` (or the
captured CUDA graph), input already on the GPU -- GPU compute time as trtexec
reports it, without host<->device copies.

``tensorrt`` and ``pycuda`` are imported only inside this module's functions.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from legr_edge.device.backends.base import Backend, missing_dependency
from legr_edge.device.onnx_info import inspect_onnx
from legr_edge.device.profiles import Profile
from legr_edge.errors import LegrError
from legr_edge.io import write_bytes, write_json

log = logging.getLogger(__name__)

TRT_HOW = ("`pip install legr_edge[trt]` (desktop/server GPU) or, on a Jetson, "
           "JetPack's `python3-libnvinfer` plus `pip install pycuda`")
CALIBRATION_IMAGES = 256


# ----- pure logic (unit-tested with fakes) --------------------------------------------
def parse_version(version: str) -> tuple[int, int, int]:
    """'10.3.0.30' -> (10, 3, 0); missing parts are 0."""
    parts = []
    for p in str(version).split(".")[:3]:
        m = re.match(r"\d+", p)  # leading digits: "0rc1" -> 0
        parts.append(int(m.group()) if m else 0)
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True)
class BuildPlan:
    """What to tell the builder, decided from TensorRT version, profile and ONNX types."""

    trt_major: int
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag member names
    builder_flags: tuple[str, ...]  # BuilderFlag member names
    calibrate: bool  # attach an INT8 entropy calibrator
    precision: str  # what the engine will really compute in
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_build(trt_version: str, precision: str, onnx_float: str = "fp32",
               has_qdq: bool = False, dla: bool = False) -> BuildPlan:
    """Choose network/builder flags for a TensorRT version (see module doc)."""
    major = parse_version(trt_version)[0]
    fallback = ("GPU_FALLBACK",) if dla else ()
    if major >= 11:
        return _plan_strongly_typed(major, precision, onnx_float, has_qdq, fallback)
    net = ("EXPLICIT_BATCH",) if major < 10 else ()
    if precision == "fp16":
        return BuildPlan(major, net, ("FP16",) + fallback, False, "fp16")
    if precision == "int8":
        # FP16 too, so layers without INT8 kernels fall back to FP16, not FP32.
        return BuildPlan(major, net, ("INT8", "FP16") + fallback, not has_qdq, "int8")
    return BuildPlan(major, net, fallback, False, "fp32")


def _plan_strongly_typed(major: int, precision: str, onnx_float: str, has_qdq: bool,
                         fallback: tuple[str, ...]) -> BuildPlan:
    effective = "int8" if has_qdq else onnx_float
    notes: list[str] = []
    if precision != effective:
        how = ("add Q/DQ nodes (explicit quantization, e.g. ModelOpt) to the ONNX"
               if precision == "int8" else
               "convert the ONNX first with ModelOpt AutoCast "
               "(python -m modelopt.onnx.autocast --onnx_path model.onnx)")
        notes.append(f"TensorRT {major} removed BuilderFlag.FP16/INT8: the strongly typed "
                     f"engine follows the ONNX types and runs {effective}, not the profile's "
                     f"{precision}; to get {precision}, {how}")
    return BuildPlan(major, ("STRONGLY_TYPED",), fallback, False, effective, tuple(notes))


def network_flag_bits(trt: Any, plan: BuildPlan) -> int:
    """Bit mask for ``Builder.create_network``; a flag missing from this TensorRT is skipped.

    TensorRT 11 makes strong typing the only mode; if a build no longer exposes
    STRONGLY_TYPED, leaving it out gives the same network.
    """
    bits = 0
    for name in plan.network_flags:
        member = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        if member is None:
            log.debug("NetworkDefinitionCreationFlag.%s not in TensorRT %s; skipped", name,
                      plan.trt_major)
            continue
        bits |= 1 << int(member)
    return bits


def _key(fields_: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields_, sort_keys=True).encode()).hexdigest()[:24]


def engine_cache_key(onnx_sha256: str, trt_version: str, device_name: str, precision: str,
                     batch_sizes: tuple[int, ...] = (1,), workspace_mib: int = 0,
                     dla_core: int = -1) -> str:
    """Key of a serialized engine: anything that makes an old engine wrong is in it."""
    return _key({"onnx": onnx_sha256, "trt": trt_version, "device": device_name,
                 "precision": precision, "batch_sizes": list(batch_sizes),
                 "workspace_mib": workspace_mib, "dla_core": dla_core})


def timing_cache_key(trt_version: str, device_name: str, precision: str) -> str:
    """Key of the timing cache: shared by all models of a run on one device/version."""
    return _key({"trt": trt_version, "device": device_name, "precision": precision})


def engine_file(cache_dir: Path, model_name: str, key: str) -> Path:
    return cache_dir / f"{model_name}.{key}.engine"


def timing_cache_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"timing.{key}.cache"


def build_engine_bytes(trt: Any, logger: Any, onnx_bytes: bytes, plan: BuildPlan,
                       profile: Profile, input_name: str, input_shape: tuple[int, ...],
                       timing_cache: bytes | None,
                       calibrator: Callable[[int], Any] | None = None) -> tuple[bytes, bytes]:
    """Parse ONNX, configure and build. Returns (engine bytes, timing cache bytes)."""
    builder = trt.Builder(logger)
    network = builder.create_network(network_flag_bits(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT ONNX parser: {errors or 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, profile.workspace_mib << 20)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if profile.dla_core >= 0:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = profile.dla_core
    first = _add_batch_profiles(builder, config, profile.batch_sizes, input_name, input_shape)
    if plan.calibrate:
        if calibrator is None:
            raise RuntimeError("INT8 without Q/DQ nodes needs calibration images (RUN/data/eval.npz)")
        config.int8_calibrator = calibrator(profile.batch_sizes[0])
        config.set_calibration_profile(first)
    cache = config.create_timing_cache(timing_cache or b"")
    config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed (run with -v for the builder log)")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def _add_batch_profiles(builder: Any, config: Any, batch_sizes: tuple[int, ...],
                        input_name: str, input_shape: tuple[int, ...]) -> Any:
    """One optimisation profile per batch size, in profile order; returns the first."""
    first = None
    for b in batch_sizes:
        shape = (b, *input_shape)
        p = builder.create_optimization_profile()
        p.set_shape(input_name, shape, shape, shape)
        config.add_optimization_profile(p)
        first = first if first is not None else p
    return first


# ----- imports ------------------------------------------------------------------------
def _import_trt(profile: Profile) -> tuple[Any, Any]:
    try:
        import tensorrt as trt
    except ImportError:
        raise missing_dependency("tensorrt", profile, TRT_HOW) from None
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise missing_dependency("pycuda", profile, TRT_HOW) from None
    return trt, cuda


# ----- the backend --------------------------------------------------------------------
@dataclass
class _Slot:
    """Execution context and device buffers for one batch size."""

    context: Any
    host_in: np.ndarray
    host_out: np.ndarray
    device: dict[str, Any]
    graph: Any = None


class TensorRTBackend(Backend):
    """TensorRT engine + pycuda buffers; ``step`` returns CUDA-event milliseconds."""

    name = "tensorrt"

    @classmethod
    def check_available(cls, profile: Profile) -> None:
        _, cuda = _import_trt(profile)
        try:
            cuda.init()
            count = cuda.Device.count()
        except Exception as e:  # driver missing / broken
            raise LegrError(f"profile {profile.name!r}: CUDA driver not usable ({e}); "
                            f"profile with --profile cpu-ort instead") from None
        if count < 1:
            raise LegrError(f"profile {profile.name!r} needs a CUDA GPU and none is visible; "
                            f"profile with --profile cpu-ort instead")

    def activate_impl(self) -> None:
        trt, cuda = _import_trt(self.profile)
        self._trt, self._cuda = trt, cuda
        cuda.init()
        dev = cuda.Device(0)
        self._cuda_ctx = dev.retain_primary_context()  # the context TensorRT's runtime uses too
        self._cuda_ctx.push()
        self._device_name = dev.name()
        self._logger = trt.Logger(trt.Logger.VERBOSE if log.isEnabledFor(logging.DEBUG)
                                  else trt.Logger.WARNING)
        info = inspect_onnx(self.spec.onnx_path)
        self._plan = plan_build(trt.__version__, self.profile.precision, info.float_type,
                                info.has_qdq, self.profile.dla_core >= 0)
        for note in self._plan.notes:
            self.warn(note)
        self._engine = self._load_or_build()
        self._stream = cuda.Stream()
        self._start, self._end = cuda.Event(), cuda.Event()
        self._slots: dict[int, _Slot] = {}
        self._io = self._io_names()

    def _cache_dir(self) -> Path:
        if self.spec.cache_dir is None:
            raise RuntimeError("TensorRT backend needs a cache_dir (RUN/engines/<profile>)")
        self.spec.cache_dir.mkdir(parents=True, exist_ok=True)
        return self.spec.cache_dir

    def _load_or_build(self) -> Any:
        """Deserialize a cached engine if its key matches, else build (and cache) one."""
        trt = self._trt
        p = self.profile
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

    def _build(self, key: str) -> bytes:
        trt = self._trt
        tkey = timing_cache_key(trt.__version__, self._device_name, self._plan.precision)
        tpath = timing_cache_file(self._cache_dir(), tkey)
        old_cache = tpath.read_bytes() if tpath.is_file() else None
        log.info("%s: building TensorRT %s engine (%s)...", self.spec.name, trt.__version__,
                 self._plan.precision)
        engine, cache = build_engine_bytes(
            trt, self._logger, self.spec.onnx_path.read_bytes(), self._plan, self.profile,
            self.spec.input_name, self.spec.input_shape, old_cache, self._calibrator_factory())
        write_bytes(self._engine_path, engine)
        write_bytes(tpath, cache)
        write_json(self._engine_path.with_suffix(".json"), {
            "key": key, "onnx_sha256": self.spec.onnx_sha256, "tensorrt": trt.__version__,
            "device": self._device_name, "plan": self._plan.to_dict(),
            "profile": self.profile.to_dict()})
        return engine

    def _calibrator_factory(self) -> Callable[[int], Any] | None:
        if not self._plan.calibrate or self.spec.calibration is None:
            return None
        data = np.ascontiguousarray(self.spec.calibration[:CALIBRATION_IMAGES], dtype=np.float32)
        cache = self._cache_dir() / f"{self.spec.name}.{self.spec.onnx_sha256[:16]}.calib"
        return lambda batch: _make_calibrator(self._trt, self._cuda, data, batch, cache)

    def _io_names(self) -> tuple[str, str]:
        trt, e = self._trt, self._engine
        names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
        inputs = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) < 1:
            raise RuntimeError(f"expected 1 input and >= 1 output, engine has {inputs} / {outputs}")
        return inputs[0], outputs[0]

    def _slot(self, batch: int) -> _Slot:
        """Context bound to this batch size's optimisation profile, with its buffers."""
        if batch in self._slots:
            return self._slots[batch]
        if batch not in self.profile.batch_sizes:
            raise ValueError(f"batch {batch} has no optimisation profile "
                             f"(profile batch_sizes: {list(self.profile.batch_sizes)})")
        trt, cuda, e = self._trt, self._cuda, self._engine
        ctx = e.create_execution_context()
        ctx.set_optimization_profile_async(self.profile.batch_sizes.index(batch), self._stream.handle)
        in_name, out_name = self._io
        ctx.set_input_shape(in_name, (batch, *self.spec.input_shape))
        device, host = {}, {}
        for name in (e.get_tensor_name(i) for i in range(e.num_io_tensors)):
            shape = tuple(ctx.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(e.get_tensor_dtype(name)))
            host[name] = cuda.pagelocked_empty(shape, dtype)
            device[name] = cuda.mem_alloc(max(1, host[name].nbytes))
            ctx.set_tensor_address(name, int(device[name]))
        slot = _Slot(ctx, host[in_name], host[out_name], device)
        self._slots[batch] = slot
        return slot

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        cuda = self._cuda
        slot = self._slot(x.shape[0])
        in_name, out_name = self._io
        slot.host_in[...] = x.astype(slot.host_in.dtype)
        cuda.memcpy_htod_async(slot.device[in_name], slot.host_in, self._stream)
        slot.context.execute_async_v3(self._stream.handle)
        cuda.memcpy_dtoh_async(slot.host_out, slot.device[out_name], self._stream)
        self._stream.synchronize()
        return slot.host_out.astype(np.float32).reshape(x.shape[0], -1)

    def prepare_impl(self, batch_size: int) -> None:
        slot = self._slot(batch_size)
        in_name, _ = self._io
        rng = np.random.default_rng(0)
        slot.host_in[...] = rng.standard_normal(slot.host_in.shape).astype(slot.host_in.dtype)
        self._cuda.memcpy_htod_async(slot.device[in_name], slot.host_in, self._stream)
        slot.context.execute_async_v3(self._stream.handle)  # first run does lazy setup
        self._stream.synchronize()
        if self.profile.cuda_graphs and slot.graph is None:
            slot.graph = self._capture(slot)
        self._current = slot

    def _capture(self, slot: _Slot) -> Any:
        """Capture one enqueue into a CUDA graph; on failure warn and run without."""
        try:
            self._stream.begin_capture()
            slot.context.execute_async_v3(self._stream.handle)
            graph = self._stream.end_capture()
            instance = graph.instantiate()
            instance.launch(self._stream)  # one trial replay before trusting it for timing
            self._stream.synchronize()
            return instance
        except Exception as e:
            self.warn(f"CUDA graph capture failed ({type(e).__name__}: {e}); "
                      "timing plain execute_async_v3 instead")
            return None

    def step_impl(self) -> float | None:
        slot = self._current
        self._start.record(self._stream)
        if slot.graph is not None:
            slot.graph.launch(self._stream)
        else:
            slot.context.execute_async_v3(self._stream.handle)
        self._end.record(self._stream)
        self._end.synchronize()
        return self._start.time_till(self._end)

    def deactivate_impl(self) -> None:
        """Free in dependency order (graphs, contexts, buffers, engine), then pop the CUDA context."""
        try:
            for slot in getattr(self, "_slots", {}).values():
                slot.graph = None
                slot.context = None
                for mem in slot.device.values():
                    mem.free()
            self._slots = {}
            self._current = None
            self._engine = None
            self._runtime = None
            self._stream = self._start = self._end = None
        finally:
            if getattr(self, "_cuda_ctx", None) is not None:
                self._cuda_ctx.pop()
                self._cuda_ctx = None

    @property
    def engine_path(self) -> Path | None:
        return getattr(self, "_engine_path", None)

    def info_impl(self) -> dict[str, Any]:
        plan = getattr(self, "_plan", None)
        return {
            "precision": plan.precision if plan else self.profile.precision,
            "precision_requested": self.profile.precision,
            "providers": ["TensorRT"],
            "device_name": getattr(self, "_device_name", None),
            "engine_path": str(self.engine_path) if self.engine_path else None,
            "engine_reused": getattr(self, "_engine_reused", None),
            "build_plan": plan.to_dict() if plan else None,
            "cuda_graphs": bool(self.profile.cuda_graphs and any(
                s.graph is not None for s in getattr(self, "_slots", {}).values())),
            "versions": {"tensorrt": getattr(getattr(self, "_trt", None), "__version__", None)},
            "timing": "CUDA events around execute_async_v3 (GPU compute, no H2D/D2H)",
        }


def _make_calibrator(trt: Any, cuda: Any, data: np.ndarray, batch: int, cache: Path) -> Any:
    """INT8 entropy calibrator over preprocessed eval images (TensorRT < 11 only)."""

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._next = 0
            self._mem = cuda.mem_alloc(data[:batch].nbytes)

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._next + batch > len(data):
                return None
            cuda.memcpy_htod(self._mem, np.ascontiguousarray(data[self._next:self._next + batch]))
            self._next += batch
            return [int(self._mem)]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, blob: Any) -> None:
            write_bytes(cache, bytes(blob))

    return _Calibrator()
