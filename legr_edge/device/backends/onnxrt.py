"""ONNX Runtime backend: CPU by default, CUDA or TensorRT execution providers on request.

ONNX Runtime drops a provider it cannot load and quietly runs on the CPU instead,
which would turn a "GPU" profile into CPU numbers. We therefore compare the
providers the profile asked for with ``session.get_providers()`` and say loudly
(log + ``warnings`` in the results) when a GPU provider is missing.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np

from legr_edge.device.backends.base import Backend, missing_dependency
from legr_edge.device.profiles import GPU_PROVIDERS, Profile

log = logging.getLogger(__name__)

# typing.Tuple, not tuple[...]: a module-level alias is evaluated at run time, and
# JetPack 5 runs Python 3.8, where tuple[...] is a TypeError.
ProviderEntry = Tuple[str, Dict[str, str]]


def provider_options(profile: Profile, input_name: str, input_shape: tuple[int, ...],
                     cache_dir: Path | None) -> list[ProviderEntry]:
    """Map a profile onto ONNX Runtime ``providers`` (name, options) in priority order.

    Pure function (no onnxruntime import) so the mapping is unit-tested everywhere.
    """
    out: list[ProviderEntry] = []
    for name in profile.providers:
        if name == "TensorrtExecutionProvider":
            out.append((name, _trt_ep_options(profile, input_name, input_shape, cache_dir)))
        elif name == "CUDAExecutionProvider":
            out.append((name, _cuda_ep_options(profile)))
        else:
            out.append((name, {}))
    return out


def _cuda_ep_options(profile: Profile) -> dict[str, str]:
    opts = {"device_id": "0", "cudnn_conv_algo_search": "EXHAUSTIVE"}
    if profile.cuda_graphs:
        opts["enable_cuda_graph"] = "1"
    return opts


def _trt_ep_options(profile: Profile, input_name: str, input_shape: tuple[int, ...],
                    cache_dir: Path | None) -> dict[str, str]:
    dims = "x".join(str(d) for d in input_shape)
    lo, hi = min(profile.batch_sizes), max(profile.batch_sizes)
    opts = {
        "device_id": "0",
        "trt_max_workspace_size": str(profile.workspace_mib * 1024 * 1024),
        "trt_fp16_enable": "1" if profile.precision in ("fp16", "int8") else "0",
        "trt_int8_enable": "1" if profile.precision == "int8" else "0",
        "trt_profile_min_shapes": f"{input_name}:{lo}x{dims}",
        "trt_profile_opt_shapes": f"{input_name}:{profile.batch_sizes[0]}x{dims}",
        "trt_profile_max_shapes": f"{input_name}:{hi}x{dims}",
    }
    if profile.dla_core >= 0:
        opts.update(trt_dla_enable="1", trt_dla_core=str(profile.dla_core))
    if profile.cuda_graphs:
        opts["trt_cuda_graph_enable"] = "1"
    if cache_dir is not None:
        path = str(cache_dir / "ort-trt")
        opts.update(trt_engine_cache_enable="1", trt_engine_cache_path=path,
                    trt_timing_cache_enable="1", trt_timing_cache_path=path)
    return opts


def fell_back(requested: list[str], actual: list[str]) -> list[str]:
    """GPU providers that were requested but are not in the session: the silent fallback."""
    return [p for p in requested if p in GPU_PROVIDERS and p not in actual]


def _explain_ir_version(error: Exception, path: Path, ort_version: str) -> Exception:
    """ORT's 'Unsupported model IR version' as one line that says what to install."""
    m = re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", str(error))
    if not m:
        return error
    return RuntimeError(
        f"onnxruntime {ort_version} reads ONNX IR version <= {m.group(2)}, but {path.name} is IR "
        f"{m.group(1)}: install a newer onnxruntime (`pip install -U \"legr_edge[ort]\"`; IR 10, "
        f"which torch's exporter writes, needs onnxruntime >= 1.18, the last one for Python 3.8 "
        f"is 1.19) or export the run with a lower IR version")


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime InferenceSession; host-timed (``step`` returns None)."""

    name = "onnxruntime"

    @classmethod
    def check_available(cls, profile: Profile) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise missing_dependency("onnxruntime", profile,
                                     "`pip install onnxruntime` (CPU) or `onnxruntime-gpu`") from None
        missing = [p for p in profile.providers if p not in onnxruntime.get_available_providers()]
        if missing:
            log.warning("profile %s asks for %s, which this onnxruntime %s does not offer "
                        "(available: %s); results would be CPU numbers -- install onnxruntime-gpu "
                        "(desktop) or the Jetson Zoo wheel", profile.name, ", ".join(missing),
                        onnxruntime.__version__, ", ".join(onnxruntime.get_available_providers()))

    def activate_impl(self) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        if self.profile.threads > 0:
            so.intra_op_num_threads = self.profile.threads
        so.log_severity_level = 3  # errors only: provider fallbacks are reported by us
        requested = provider_options(self.profile, self.spec.input_name, self.spec.input_shape,
                                     self.spec.cache_dir)
        available = set(ort.get_available_providers())
        usable = [(n, o) for n, o in requested if n in available] or [("CPUExecutionProvider", {})]
        self._ensure_cache_dir(usable)
        try:
            self._session = ort.InferenceSession(str(self.spec.onnx_path), sess_options=so,
                                                 providers=[n for n, _ in usable],
                                                 provider_options=[o for _, o in usable])
        except Exception as e:
            raise _explain_ir_version(e, self.spec.onnx_path, ort.__version__) from None
        self._requested = [n for n, _ in requested]
        self._actual = list(self._session.get_providers())
        lost = fell_back(self._requested, self._actual)
        if lost:
            self.warn(f"requested {', '.join(lost)} but ONNX Runtime runs on "
                      f"{', '.join(self._actual)}: these are NOT {self.profile.device} numbers")
        self._input = self._session.get_inputs()[0].name
        self._version = ort.__version__

    def _ensure_cache_dir(self, usable: list[ProviderEntry]) -> None:
        for _, opts in usable:
            if "trt_engine_cache_path" in opts:
                Path(opts["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)

    def deactivate_impl(self) -> None:
        self._session = None
        self._binding = None

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: x})[0]

    def prepare_impl(self, batch_size: int) -> None:
        x = np.random.default_rng(0).standard_normal(
            (batch_size, *self.spec.input_shape)).astype(np.float32)
        self._x = x
        self._binding = None
        if any(p in GPU_PROVIDERS for p in self._actual):
            self._binding = self._gpu_binding(x)

    def _gpu_binding(self, x: np.ndarray) -> Any:
        """IOBinding with input and output on the GPU: times the model, not PCIe copies."""
        import onnxruntime as ort

        binding = self._session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        binding.bind_ortvalue_input(self._input, value)
        for out in self._session.get_outputs():
            binding.bind_output(out.name, "cuda", 0)
        self._device_input = value  # keep alive
        return binding

    def step_impl(self) -> float | None:
        if self._binding is not None:
            self._session.run_with_iobinding(self._binding)
        else:
            self._session.run(None, {self._input: self._x})
        return None

    def info_impl(self) -> dict[str, Any]:
        return {
            "providers_requested": list(getattr(self, "_requested", [])),
            "providers": list(getattr(self, "_actual", [])),
            "fell_back_to_cpu": bool(fell_back(getattr(self, "_requested", []),
                                               getattr(self, "_actual", []))),
            "threads": self.profile.threads,
            "versions": {"onnxruntime": getattr(self, "_version", None)},
            "timing": "host perf_counter around InferenceSession.run",
        }
