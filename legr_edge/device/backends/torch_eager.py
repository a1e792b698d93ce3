"""Optional torch eager backend: the same models, straight from RUN/models/<name>.

Only for side-by-side numbers ("how much does ONNX Runtime / TensorRT buy us over
eager PyTorch on this board?"). torch is imported inside the methods, so importing
this module -- and the profile command -- works where torch is absent.
"""
from __future__ import annotations

import importlib.util
import logging
from typing import Any

import numpy as np

from legr_edge.device.backends.base import Backend, missing_dependency
from legr_edge.device.profiles import Profile
from legr_edge.errors import LegrError

log = logging.getLogger(__name__)


class TorchEagerBackend(Backend):
    """Eager ``nn.Module`` on CPU or CUDA; CUDA steps are timed with CUDA events."""

    name = "torch"

    @classmethod
    def check_available(cls, profile: Profile) -> None:
        if importlib.util.find_spec("torch") is None:
            raise missing_dependency("torch", profile, "`pip install legr_edge[torch]`")
        if importlib.util.find_spec("legr_edge.models.arch") is None:
            raise LegrError("the torch backend needs legr_edge.models.arch (the workstation "
                            "half of legr_edge); profile the ONNX files with --profile cpu-ort")

    def activate_impl(self) -> None:
        import torch

        from legr_edge.models.arch import load_model

        if self.spec.model_dir is None or not (self.spec.model_dir / "arch.json").is_file():
            raise RuntimeError(f"no torch model at {self.spec.model_dir} (arch.json + weights.pt)")
        if self.profile.device == "cuda" and not torch.cuda.is_available():
            raise LegrError(f"profile {self.profile.name!r} wants CUDA but torch sees no GPU")
        if self.profile.threads > 0:
            torch.set_num_threads(self.profile.threads)
        self._torch = torch
        self._device = torch.device(self.profile.device)
        self._dtype = torch.float16 if self.profile.precision == "fp16" else torch.float32
        if self.profile.precision == "int8":
            raise RuntimeError("the torch eager backend has no int8 path; use fp32 or fp16")
        self._model = load_model(self.spec.model_dir, map_location="cpu").to(
            self._device, self._dtype).eval()

    def deactivate_impl(self) -> None:
        self._model = None
        self._x = None

    def _run(self, x: Any) -> Any:
        with self._torch.inference_mode():
            return self._model(x)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        t = self._torch.from_numpy(x).to(self._device, self._dtype)
        return self._run(t).float().cpu().numpy()

    def prepare_impl(self, batch_size: int) -> None:
        torch = self._torch
        g = torch.Generator().manual_seed(0)
        self._x = torch.randn((batch_size, *self.spec.input_shape), generator=g).to(
            self._device, self._dtype)
        if self._device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def step_impl(self) -> float | None:
        if self._device.type != "cuda":
            self._run(self._x)
            return None
        self._start.record()
        self._run(self._x)
        self._end.record()
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))

    def info_impl(self) -> dict[str, Any]:
        torch = getattr(self, "_torch", None)
        return {
            "providers": [f"torch-eager-{self.profile.device}"],
            "versions": {"torch": getattr(torch, "__version__", None)},
            "timing": ("CUDA events around forward()" if self.profile.device == "cuda"
                       else "host perf_counter around forward()"),
        }
