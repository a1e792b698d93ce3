"""The one timing loop every backend goes through, modelled on trtexec.

1. Warm up for ``warmup_s`` seconds (at least one call): lazy allocations, kernel
   autotuning, caches and clock boost settle before anything is recorded.
2. Time single inferences until BOTH ``min_iters`` iterations AND ``min_seconds``
   seconds are reached, so a fast model gets enough samples for p99 and a slow one
   still runs long enough to see thermal or scheduling effects.
3. Keep every per-iteration sample (ms). A backend's ``step()`` returns a
   device-measured time (CUDA events) or None; for None the host clock around the
   call is used.

Statistics are computed once, here, so that every backend's "median" means the same.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

NOISY_CV = 0.10  # coefficient of variation above which a measurement is called noisy
MAX_ITERS = 1_000_000  # hard stop in case a clock misbehaves


@dataclass(frozen=True)
class TimingStats:
    """Summary of per-iteration latencies (ms) for one batch size."""

    n: int
    batch_size: int
    min: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    max: float
    std: float
    cv: float
    throughput_ips: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], batch_size: int) -> "TimingStats":
        """Compute the statistics. std is the population std (ddof=0); percentiles interpolate linearly."""
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.size == 0:
            raise ValueError("no timing samples")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        mean = float(a.mean())
        std = float(a.std())
        median = float(np.median(a))
        p90, p95, p99 = (float(v) for v in np.percentile(a, [90, 95, 99]))
        return cls(
            n=int(a.size), batch_size=batch_size, min=float(a.min()), mean=mean,
            median=median, p90=p90, p95=p95, p99=p99, max=float(a.max()), std=std,
            cv=std / mean if mean > 0 else math.inf,
            throughput_ips=batch_size * 1000.0 / median if median > 0 else math.inf,
        )

    @property
    def noisy(self) -> bool:
        return self.cv > NOISY_CV

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class Measurement:
    """Stats plus the raw samples and where the time came from."""

    stats: TimingStats
    samples_ms: list[float]
    warmup_iters: int
    source: str  # "device" (e.g. CUDA events) or "host" (perf_counter around step)


def measure(step: Callable[[], float | None], *, batch_size: int, warmup_s: float,
            min_iters: int, min_seconds: float, label: str = "",
            clock: Callable[[], float] = time.perf_counter) -> Measurement:
    """Warm up, then time ``step`` (see module doc). ``clock`` is injectable for tests."""
    warmup_iters = _warm_up(step, warmup_s, clock)
    samples, sources = _timed_loop(step, min_iters, min_seconds, clock)
    stats = TimingStats.from_samples(samples, batch_size)
    if stats.noisy:
        log.warning("%snoisy timing: cv=%.2f (std %.3f ms / mean %.3f ms) over %d iterations; "
                    "close other programs, fix clocks (Jetson: nvpmodel + jetson_clocks) "
                    "or raise min_seconds", f"{label}: " if label else "", stats.cv,
                    stats.std, stats.mean, stats.n)
    source = "device" if sources["device"] and not sources["host"] else (
        "host" if not sources["device"] else "mixed")
    return Measurement(stats=stats, samples_ms=samples, warmup_iters=warmup_iters, source=source)


def _warm_up(step: Callable[[], float | None], warmup_s: float, clock: Callable[[], float]) -> int:
    """Call ``step`` for ``warmup_s`` seconds, at least once; return the count."""
    t0 = clock()
    n = 0
    while True:
        step()
        n += 1
        if clock() - t0 >= warmup_s or n >= MAX_ITERS:
            return n


def _timed_loop(step: Callable[[], float | None], min_iters: int, min_seconds: float,
                clock: Callable[[], float]) -> tuple[list[float], dict[str, int]]:
    """Collect per-iteration ms until both minimums are met."""
    samples: list[float] = []
    sources = {"device": 0, "host": 0}
    t_start = clock()
    while True:
        t0 = clock()
        device_ms = step()
        t1 = clock()
        if device_ms is None:
            samples.append((t1 - t0) * 1000.0)
            sources["host"] += 1
        else:
            samples.append(float(device_ms))
            sources["device"] += 1
        enough_iters = len(samples) >= min_iters
        enough_time = t1 - t_start >= min_seconds
        if (enough_iters and enough_time) or len(samples) >= MAX_ITERS:
            return samples, sources
