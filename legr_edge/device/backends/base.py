"""The backend life cycle shared by ONNX Runtime, TensorRT and torch eager.

Polygraphy-style explicit phases, so that building (slow, once) and timing (fast,
many times) never mix:

    backend = OnnxRuntimeBackend(spec, profile)
    with backend:                    # activate(): build session / engine
        y = backend.infer(x)         # correctness: host numpy in, host numpy out
        backend.prepare(8)           # a device-resident input of batch 8
        ms = backend.step()          # one timed inference (device ms or None)
    # deactivate(): free everything

Subclasses implement only the ``*_impl`` hooks; the public methods enforce the
order and keep ``info()`` uniform.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from legr_edge.device.profiles import Profile
from legr_edge.errors import LegrError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What a backend needs to know about one model of a run directory."""

    name: str
    onnx_path: Path
    onnx_sha256: str
    input_name: str = "input"
    output_name: str = "logits"
    input_shape: tuple[int, ...] = (3, 32, 32)  # without the batch axis
    model_dir: Path | None = None  # RUN/models/<name>, for the torch backend
    cache_dir: Path | None = None  # RUN/engines/<profile>, for engines and caches
    calibration: np.ndarray | None = field(default=None, compare=False, repr=False)


class Backend:
    """Base class; see the module docstring for the life cycle."""

    name: ClassVar[str] = "base"

    def __init__(self, spec: ModelSpec, profile: Profile) -> None:
        self.spec = spec
        self.profile = profile
        self._active = False
        self._prepared_batch: int | None = None
        self.warnings: list[str] = []

    # ----- availability ---------------------------------------------------------
    @classmethod
    def check_available(cls, profile: Profile) -> None:
        """Raise BackendUnavailable (what to install, which profile instead) if unusable here."""

    # ----- life cycle -----------------------------------------------------------
    def activate(self) -> "Backend":
        if not self._active:
            log.debug("%s: activating %s backend", self.spec.name, self.name)
            try:
                self.activate_impl()
            except BaseException:
                self._cleanup_after_failed_activate()
                raise
            self._active = True
        return self

    def _cleanup_after_failed_activate(self) -> None:
        """A half-built backend (CUDA context pushed, buffers allocated) must not leak
        into the next model: run deactivate_impl best-effort, keep the original error."""
        try:
            self.deactivate_impl()
        except Exception as e:  # the activation error is the one worth reporting
            log.debug("%s: cleanup after failed activate: %s", self.spec.name, e)

    def deactivate(self) -> None:
        if self._active:
            try:
                self.deactivate_impl()
            finally:
                self._active = False
                self._prepared_batch = None

    def __enter__(self) -> "Backend":
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    @property
    def active(self) -> bool:
        return self._active

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run one batch (host float32 NCHW) and return host float32 outputs."""
        self._require_active("infer")
        if x.ndim != 1 + len(self.spec.input_shape):
            raise ValueError(f"input must be N x {self.spec.input_shape}, got {x.shape}")
        return np.asarray(self.infer_impl(np.ascontiguousarray(x, dtype=np.float32)),
                          dtype=np.float32)

    def prepare(self, batch_size: int) -> None:
        """Make a device-resident input of ``batch_size`` for :meth:`step`."""
        self._require_active("prepare")
        self.prepare_impl(batch_size)
        self._prepared_batch = batch_size

    def step(self) -> float | None:
        """One timed inference: device-measured ms, or None to be timed on the host."""
        if self._prepared_batch is None:
            raise RuntimeError(f"{self.name}: step() before prepare()")
        return self.step_impl()

    def info(self) -> dict[str, Any]:
        """What actually ran: backend, precision, providers, versions, warnings."""
        d: dict[str, Any] = {"backend": self.name, "precision": self.profile.precision}
        d.update(self.info_impl())
        d["warnings"] = list(self.warnings)
        return d

    def warn(self, message: str) -> None:
        """Log a warning and keep it for the results (CSV ``warnings`` column)."""
        log.warning("%s: %s", self.spec.name, message)
        self.warnings.append(message)

    def _require_active(self, what: str) -> None:
        if not self._active:
            raise RuntimeError(f"{self.name}: {what}() before activate()")

    # ----- hooks ----------------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        """Free sessions, engines, buffers. Default: nothing to free."""

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def prepare_impl(self, batch_size: int) -> None:
        raise NotImplementedError

    def step_impl(self) -> float | None:
        raise NotImplementedError

    def info_impl(self) -> dict[str, Any]:
        return {}

    @property
    def engine_path(self) -> Path | None:
        """Serialized engine on disk, for backends that build one."""
        return None


class BackendUnavailable(LegrError):
    """This profile's backend cannot run on this machine (missing package, driver, version).

    Raised by :meth:`Backend.check_available` before any model is touched; the profile
    command then records every model as failed with this message.
    """


def missing_dependency(package: str, profile: Profile, how: str) -> BackendUnavailable:
    """The one message shape for 'this backend cannot run here'."""
    return BackendUnavailable(
        f"profile {profile.name!r} needs backend {profile.backend!r}, but the Python package "
        f"{package!r} cannot be imported here. Install it with {how}, or profile on this "
        f"machine's CPU instead with --profile cpu-ort")
