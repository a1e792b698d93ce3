"""Asynchronous aging evolution: out-of-order arrivals, re-issue on resume, replay.

A fake pool with N slots completes candidates in a random order (what Ray workers of
uneven speed do); the fitness is the cheap deterministic one of test_evolution.
"""
from __future__ import annotations

import numpy as np
import pytest

from legr_edge.errors import LegrError
from legr_edge.evolution import (EvolutionSettings, EvolutionState, evolve, evolve_async, load_state,
                                 replay)

from tests.test_evolution import fitness

SETTINGS = EvolutionSettings(population=6, sample=3, candidates=30, seed=2)


class ShuffledPool:
    """``slots`` workers; each collect finishes a random one of the candidates in flight."""

    def __init__(self, slots: int, seed: int, interrupt_after: int | None = None):
        self.slots, self.rng, self.running = slots, np.random.default_rng(seed), []
        self.interrupt_after, self.collected = interrupt_after, 0

    def ready(self, k, done):
        return len(self.running) < self.slots

    def submit(self, k, alpha, kappa):
        self.running.append((k, alpha, kappa))

    def collect(self):
        if self.collected == self.interrupt_after:
            raise KeyboardInterrupt  # the driver is killed with candidates in flight
        self.collected += 1
        k, alpha, kappa = self.running.pop(int(self.rng.integers(len(self.running))))
        return (k, *fitness(k, alpha, kappa), f"w{k % self.slots}")


def _fresh():
    return EvolutionState.fresh(SETTINGS, np.ones(10))


def test_one_slot_is_the_serial_search():
    serial, pooled = _fresh(), _fresh()
    evolve(fitness, serial)
    evolve_async(ShuffledPool(1, 0), pooled)
    assert [(c.index, c.alpha, c.kappa, c.fitness) for c in pooled.history] == \
        [(c.index, c.alpha, c.kappa, c.fitness) for c in serial.history]
    assert [c.dispatched_after for c in serial.history] == list(range(SETTINGS.candidates))


def test_out_of_order_arrivals_age_by_completion_and_use_every_slot():
    state = _fresh()
    pool = ShuffledPool(4, 1)
    evolve_async(pool, state)
    indices = [c.index for c in state.history]
    assert sorted(indices) == list(range(SETTINGS.candidates)) and indices != sorted(indices)
    assert state.population == indices[-SETTINGS.population:]   # the last completed survive
    assert not state.pending
    # the first `population` were dispatched without waiting, 4 at a time
    assert [state.candidate(k).dispatched_after for k in range(4)] == [0, 0, 0, 0]
    # a child is drawn only once `sample` members completed
    children = [c for c in state.history if c.index >= SETTINGS.population]
    assert min(c.dispatched_after for c in children) >= SETTINGS.sample


def test_replay_reproduces_an_asynchronous_run_exactly():
    state = _fresh()
    evolve_async(ShuffledPool(3, 5), state)
    again = replay(state, fitness)
    assert [(c.index, c.alpha, c.kappa, c.fitness) for c in again.history] == \
        [(c.index, c.alpha, c.kappa, c.fitness) for c in state.history]
    other = _fresh()
    evolve_async(ShuffledPool(3, 6), other)  # another arrival order: another (valid) search
    assert [c.alpha for c in other.history] != [c.alpha for c in state.history]


def test_driver_kill_reissues_the_candidates_in_flight(tmp_path):
    path = tmp_path / "state.json"
    with pytest.raises(KeyboardInterrupt):
        evolve_async(ShuffledPool(3, 7, interrupt_after=12), _fresh(), path)
    saved = load_state(path)
    assert len(saved.history) == 12 and len(saved.pending) == 3
    in_flight = {p["index"]: p["alpha"] for p in saved.pending}
    evolve_async(ShuffledPool(2, 8), saved, path)  # resumed with another worker count
    done = load_state(path)
    assert sorted(c.index for c in done.history) == list(range(SETTINGS.candidates))
    assert all(done.candidate(k).alpha == a for k, a in in_flight.items())  # re-issued as recorded
    assert replay(done, fitness).history == [
        type(c)(c.index, c.alpha, c.kappa, c.fitness, c.info, "replay", c.dispatched_after)
        for c in done.history]


def test_replay_refuses_an_unfinished_search(tmp_path):
    path = tmp_path / "state.json"
    with pytest.raises(KeyboardInterrupt):
        evolve_async(ShuffledPool(2, 0, interrupt_after=5), _fresh(), path)
    with pytest.raises(LegrError, match="finished search"):
        replay(load_state(path), fitness)
