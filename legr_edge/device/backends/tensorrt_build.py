"""TensorRT build planning: what to tell the builder, decided without a GPU.

Everything here is pure or talks only to the builder objects it is handed, so it is
unit-tested with a strict fake ``tensorrt`` whose names come from the real bindings
(tests/device/trt_api/). The GPU runtime half is :mod:`.tensorrt`.

Version branches (the installed TensorRT decides, not the profile):

* < 8.5 (JetPack 5.0.x = 8.4): refused up front. The runtime half needs
  ``execute_async_v3``, ``set_tensor_address``, ``set_input_shape`` and
  ``num_io_tensors``, which 8.4 lacks; without the check the run would die with an
  AttributeError after a full engine build.
* 8.5 / 8.6 (JetPack 5.1 / JetPack 6.0): networks need ``EXPLICIT_BATCH``; the ONNX
  parser stops at opset 17.
* 10.x: weakly typed network; ``BuilderFlag.FP16`` / ``INT8`` select precision (INT8
  without Q/DQ nodes is calibrated on eval images).
* 11+: the precision flags are gone; the network is strongly typed and the engine runs
  in the precision of the ONNX types. For an ``fp16`` profile the FP32 ONNX is first
  converted to FP16 on the device (:mod:`legr_edge.device.fp16`), and the deployed
  top-1 the profile command measures is that of the converted model.

Engines and timing caches are keyed by everything that makes an old one wrong: the
ONNX, TensorRT version, precision, build settings and the GPU's identity -- name,
compute capability, SM count, memory and the board's device-tree model, because the
CUDA device name is "Orin" on both an Orin Nano and an AGX Orin.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from legr_edge.device.backends.base import BackendUnavailable

log = logging.getLogger(__name__)

MIN_TRT = (8, 5)
# Highest ONNX opset the ONNX parser of each TensorRT release accepts (onnx-tensorrt's
# operator matrix: 8.5 and 8.6 "up to opset 17", 10.0 "opset 9 to 20"). A newer release
# than listed gets the newest entry's value: it accepts at least that.
PARSER_MAX_OPSET = ((8, 5, 17), (8, 6, 17), (10, 0, 20))


def parse_version(version: str) -> Tuple[int, int, int]:
    """'10.3.0.30' -> (10, 3, 0); missing parts are 0."""
    parts = []
    for p in str(version).split(".")[:3]:
        m = re.match(r"\d+", p)  # leading digits: "0rc1" -> 0
        parts.append(int(m.group()) if m else 0)
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


def check_trt_version(version: str, profile_name: str) -> None:
    """BackendUnavailable for a TensorRT older than 8.5 (see module doc), before any build."""
    major, minor, _ = parse_version(version)
    if (major, minor) < MIN_TRT:
        raise BackendUnavailable(
            f"profile {profile_name!r}: TensorRT {version} is too old; legr_edge needs "
            f"TensorRT >= {MIN_TRT[0]}.{MIN_TRT[1]} (execute_async_v3, set_tensor_address, "
            f"set_input_shape, num_io_tensors). On a Jetson upgrade to JetPack >= 5.1, or "
            f"profile this board's CPU with --profile cpu-ort")


def parser_max_opset(version: str) -> int:
    """Highest ONNX opset the installed TensorRT's ONNX parser accepts."""
    major, minor, _ = parse_version(version)
    best = PARSER_MAX_OPSET[0][2]
    for vmaj, vmin, opset in PARSER_MAX_OPSET:
        if (major, minor) >= (vmaj, vmin):
            best = opset
    return best


def check_opset(model_opset: int, version: str) -> None:
    """RuntimeError (this model fails, the others go on) when the parser cannot read it."""
    limit = parser_max_opset(version)
    if model_opset > limit:
        raise RuntimeError(
            f"model uses ONNX opset {model_opset}, but the installed TensorRT {version}'s ONNX "
            f"parser reads opset <= {limit}; re-export with `python -m legr_edge.export RUN "
            f"--opset {limit}` (JetPack 6.0 ships TensorRT 8.6, not 10.x)")


@dataclass(frozen=True)
class BuildPlan:
    """What to tell the builder, decided from TensorRT version, profile and ONNX types."""

    trt_major: int
    network_flags: Tuple[str, ...]  # NetworkDefinitionCreationFlag member names
    builder_flags: Tuple[str, ...]  # BuilderFlag member names
    calibrate: bool  # attach an INT8 entropy calibrator
    precision: str  # what the engine will really compute in
    notes: Tuple[str, ...] = field(default=())
    convert_fp16: bool = False  # convert the FP32 ONNX to FP16 before parsing (TensorRT 11+)

    def to_dict(self) -> Dict[str, Any]:
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
                         fallback: Tuple[str, ...]) -> BuildPlan:
    net = ("STRONGLY_TYPED",)
    if precision == "fp16" and onnx_float == "fp32" and not has_qdq:
        return BuildPlan(major, net, fallback, False, "fp16", convert_fp16=True)
    effective = "int8" if has_qdq else onnx_float
    notes: Tuple[str, ...] = ()
    if precision != effective:
        how = ("add Q/DQ nodes (explicit quantization, e.g. ModelOpt) to the ONNX"
               if precision == "int8" else f"export the ONNX in {precision}")
        notes = (f"TensorRT {major} removed BuilderFlag.FP16/INT8: the strongly typed engine "
                 f"follows the ONNX types and runs {effective}, not the profile's "
                 f"{precision}; to get {precision}, {how}",)
    return BuildPlan(major, net, fallback, False, effective, notes)


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


# ----- cache keys ----------------------------------------------------------------------------
def device_identity(props: Dict[str, Any], board: Optional[str] = None) -> str:
    """One string naming a GPU precisely enough for engine reuse (see module doc)."""
    parts = [str(props.get("name", "?")), f"sm_{props.get('compute_capability', '?')}",
             f"{props.get('sm_count', '?')}SM", f"{props.get('total_mem_mib', '?')}MiB"]
    if board:
        parts.append(board)
    return " | ".join(parts)


def _key(fields_: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields_, sort_keys=True).encode()).hexdigest()[:24]


def engine_cache_key(onnx_sha256: str, trt_version: str, device_name: str, precision: str,
                     batch_sizes: Tuple[int, ...] = (1,), workspace_mib: int = 0,
                     dla_core: int = -1) -> str:
    """Key of a serialized engine. ``device_name`` is :func:`device_identity`'s string."""
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


# ----- the build -----------------------------------------------------------------------------
def build_engine_bytes(trt: Any, logger: Any, onnx_bytes: bytes, plan: BuildPlan,
                       profile: Any, input_name: str, input_shape: Tuple[int, ...],
                       timing_cache: Optional[bytes],
                       calibrator: Optional[Callable[[int], Any]] = None) -> Tuple[bytes, bytes]:
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


def _add_batch_profiles(builder: Any, config: Any, batch_sizes: Tuple[int, ...],
                        input_name: str, input_shape: Tuple[int, ...]) -> Any:
    """One optimisation profile per batch size, in profile order; returns the first."""
    first = None
    for b in batch_sizes:
        shape = (b,) + tuple(input_shape)
        p = builder.create_optimization_profile()
        p.set_shape(input_name, shape, shape, shape)
        config.add_optimization_profile(p)
        first = first if first is not None else p
    return first
