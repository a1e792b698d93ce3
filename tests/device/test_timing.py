"""The shared timing loop and its statistics, on fake steps and a fake clock (no sleeps)."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from legr_edge.device.timing import TimingStats, measure


class FakeClock:
    """Advances by ``tick`` seconds every time it is read."""

    def __init__(self, tick: float) -> None:
        self.t = 0.0
        self.tick = tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


def test_stats_on_known_samples() -> None:
    s = TimingStats.from_samples([float(v) for v in range(1, 101)], batch_size=4)
    assert s.n == 100 and s.min == 1 and s.max == 100
    assert s.mean == pytest.approx(50.5) and s.median == pytest.approx(50.5)
    assert s.p90 == pytest.approx(90.1) and s.p95 == pytest.approx(95.05)
    assert s.p99 == pytest.approx(99.01)
    assert s.std == pytest.approx(np.std(np.arange(1, 101)))
    assert s.cv == pytest.approx(s.std / 50.5)
    assert s.throughput_ips == pytest.approx(4 * 1000 / 50.5)
    assert set(s.to_dict()) >= {"min", "mean", "median", "p90", "p95", "p99", "std", "cv",
                                "throughput_ips", "n"}


def test_constant_samples_have_zero_cv() -> None:
    s = TimingStats.from_samples([2.0] * 10, batch_size=1)
    assert s.cv == 0 and not s.noisy and s.throughput_ips == pytest.approx(500)


def test_empty_samples_rejected() -> None:
    with pytest.raises(ValueError):
        TimingStats.from_samples([], batch_size=1)


def test_min_iters_bound_when_time_is_short() -> None:
    calls = []
    m = measure(lambda: calls.append(1) or 1.5, batch_size=1, warmup_s=0.0, min_iters=25,
                min_seconds=0.0, clock=FakeClock(1e-6))
    assert m.stats.n == 25 and len(m.samples_ms) == 25
    assert m.warmup_iters == 1  # warm-up always runs at least once
    assert len(calls) == 26
    assert m.source == "device" and m.stats.median == 1.5


def test_min_seconds_bound_when_iterations_are_few() -> None:
    # every clock read advances 10 ms; a timed iteration reads the clock twice
    m = measure(lambda: None, batch_size=2, warmup_s=0.0, min_iters=1, min_seconds=0.5,
                clock=FakeClock(0.01))
    assert m.stats.n >= 20
    assert m.source == "host"
    assert m.stats.median == pytest.approx(10.0)  # host-timed: t1 - t0 = one tick


def test_warmup_runs_for_warmup_seconds() -> None:
    m = measure(lambda: 1.0, batch_size=1, warmup_s=1.0, min_iters=3, min_seconds=0.0,
                clock=FakeClock(0.1))
    assert 8 <= m.warmup_iters <= 11
    assert m.stats.n == 3


def test_noisy_measurement_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    values = iter([1.0, 1.0] + [1.0, 5.0] * 10)
    with caplog.at_level(logging.WARNING):
        m = measure(lambda: next(values), batch_size=1, warmup_s=0.0, min_iters=10,
                    min_seconds=0.0, label="m1", clock=FakeClock(1e-6))
    assert m.stats.noisy
    assert any("noisy timing" in r.message and "m1" in r.message for r in caplog.records)
