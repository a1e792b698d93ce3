"""Regularized (aging) evolution of LeGR's per-layer affine transforms.

This module knows nothing about networks: a candidate is a pair of vectors
(alpha, kappa), and a caller-supplied function returns its fitness (higher is better).
The state is saved atomically after every candidate, so a killed search resumes where
it stopped and ends with the same result as an uninterrupted one (the fitness function
must be deterministic per candidate index, which the caller ensures by seeding).

Schedule (Real et al. 2019, as LeGR uses it): the first ``population`` candidates are
the initial population; after that each step samples ``sample`` members, mutates the
fittest, evaluates the child, appends it and removes the OLDEST member.

Asynchronous workers (Real et al. 2019 designed aging evolution for them): the loop
(:func:`evolve_async`) hands candidates to a :class:`Pool` whenever it has a free worker
and takes results back in COMPLETION order; the population ages by completion. A child
is drawn (tournament + mutation, all random draws in this process) at DISPATCH time, as
soon as its tournament can be held (at least ``sample`` members have completed). The
state records the candidates in flight (``pending``, with their transforms), so a
resumed search re-issues them, and every candidate's ``dispatched_after`` (completions
before its dispatch) plus the history's order (= the arrival order), so :func:`replay`
re-runs an N-worker search exactly. With one worker (the serial :func:`evolve`) the
next child is drawn only after the previous one completed: the draws, and so the
result, are those of the plain serial loop. With N > 1 the arrival order, which depends
on timing, changes which members a tournament sees: same seed, different (equally
valid) result, unless replayed.

The initial population starts with the caller's seed transforms (the product seeds the
identity, the paper's raw-L2 ranking, uniform pruning and uniform pruning with wider
residual streams; without seeds, member 0 is the identity). The other initial members
are random: with ``around_seeds``, each is a seed
(chosen at random) perturbed in every layer by ``init_scale``; otherwise the paper's
``alpha = exp(N(0, init_scale))``, ``kappa = N(0, init_scale) * sigma_l``. A mutation
perturbs about ``mutate_fraction`` of the layers: ``alpha *= exp(N(0, step *
mutate_scale))``, ``kappa += N(0, mutate_scale) * sigma_l``, ``step`` decaying linearly
from 1. The paper's scales are 1.0; the product's are smaller because its scores are
normalised (see legr_edge.config.SCORING).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from legr_edge import io
from legr_edge.errors import LegrError

log = logging.getLogger(__name__)

STATE_FORMAT = "legr_edge.evolution/1"


@dataclasses.dataclass(frozen=True)
class EvolutionSettings:
    population: int = 64
    sample: int = 16
    candidates: int = 400
    mutate_fraction: float = 0.1   # share of layers mutated per child (distinct layers)
    seed: int = 0
    init_scale: float = 1.0        # std of log-alpha and of kappa/sigma of random initial members
    mutate_scale: float = 1.0      # the same for mutations (log-alpha's decays with the step)
    around_seeds: bool = False     # random initial members perturb the seeds instead of identity

    def __post_init__(self):
        if self.population < 1 or self.candidates < 1:
            raise LegrError("population and candidates must be >= 1")
        if not 1 <= self.sample <= self.population:
            raise LegrError(f"sample ({self.sample}) must be in 1..population ({self.population})")
        if not (self.init_scale >= 0 and self.mutate_scale >= 0):
            raise LegrError("init_scale and mutate_scale must be >= 0")


@dataclasses.dataclass(frozen=True)
class Candidate:
    index: int
    alpha: list[float]
    kappa: list[float]
    fitness: float
    info: dict[str, Any]
    worker: str = "local"          # who evaluated it (a Ray worker's label with --workers)
    dispatched_after: int = -1     # completed candidates when it was dispatched (for replay)


FitnessFn = Callable[[int, np.ndarray, np.ndarray], tuple[float, dict[str, Any]]]


@dataclasses.dataclass
class EvolutionState:
    settings: EvolutionSettings
    sigma: list[float]
    rng_state: dict[str, Any]
    history: list[Candidate]
    population: list[int]          # candidate indices, oldest (first completed) first
    seeds: list[list[list[float]]] = dataclasses.field(default_factory=list)  # [[alpha, kappa], ...]
    # dispatched, not yet completed: {"index", "alpha", "kappa", "dispatched_after"}; re-issued on resume
    pending: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @classmethod
    def fresh(cls, settings: EvolutionSettings, sigma: np.ndarray,
              seeds: list[tuple[np.ndarray, np.ndarray]] = ()) -> "EvolutionState":
        """A new search; ``seeds`` (alpha, kappa) pairs open the initial population."""
        if len(seeds) > settings.population:
            raise LegrError(f"{len(seeds)} seed transforms do not fit a population of {settings.population}")
        rng = np.random.default_rng(settings.seed)
        packed = [[[float(x) for x in a], [float(x) for x in k]] for a, k in seeds]
        return cls(settings, [float(s) for s in sigma], rng.bit_generator.state, [], [], packed)

    def best(self) -> Candidate:
        return max(self.history, key=lambda c: (c.fitness, -c.index))

    def candidate(self, index: int) -> Candidate:
        """The completed candidate number ``index`` (history is in arrival order)."""
        for c in self.history:
            if c.index == index:
                return c
        raise KeyError(index)

    @property
    def dispatched(self) -> int:
        """Candidates handed out so far (completed + in flight); the next one's index."""
        return len(self.history) + len(self.pending)

    def to_json(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "settings": dataclasses.asdict(self.settings),
                "sigma": self.sigma, "rng_state": self.rng_state,
                "history": [dataclasses.asdict(c) for c in self.history],
                "population": self.population, "seeds": self.seeds, "pending": self.pending}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EvolutionState":
        if data.get("format") != STATE_FORMAT:
            raise LegrError(f"search state has format {data.get('format')!r}, expected {STATE_FORMAT!r}")
        return cls(EvolutionSettings(**data["settings"]), data["sigma"], data["rng_state"],
                   [Candidate(**c) for c in data["history"]], data["population"], data.get("seeds", []),
                   data.get("pending", []))


def load_state(path: Path) -> EvolutionState:
    try:
        return EvolutionState.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise LegrError(f"{path}: corrupt search state ({e}); delete it to start the search anew") from e


class Pool(Protocol):
    """Where candidates are evaluated (in this process, or on Ray workers)."""

    def ready(self, k: int, done: int) -> bool:
        """May candidate ``k`` be handed out now, ``done`` candidates having completed?"""

    def submit(self, k: int, alpha: np.ndarray, kappa: np.ndarray) -> None:
        """Start (or queue) the evaluation of candidate ``k``."""

    def collect(self) -> tuple[int, float, dict[str, Any], str]:
        """Wait for one evaluation to finish: (k, fitness, info, worker)."""


class SerialPool:
    """Evaluates in this process, one candidate at a time: the serial search."""

    def __init__(self, fitness: FitnessFn):
        self.fitness, self.queue = fitness, []

    def ready(self, k: int, done: int) -> bool:
        return not self.queue

    def submit(self, k: int, alpha: np.ndarray, kappa: np.ndarray) -> None:
        self.queue.append((k, alpha, kappa))

    def collect(self) -> tuple[int, float, dict[str, Any], str]:
        k, alpha, kappa = self.queue.pop(0)
        value, info = self.fitness(k, alpha, kappa)
        return k, value, info, "local"


class ReplayPool(SerialPool):
    """Re-runs a recorded search: dispatches and arrivals in the recorded order."""

    def __init__(self, fitness: FitnessFn, recorded: list[Candidate]):
        super().__init__(fitness)
        self.after = {c.index: c.dispatched_after for c in recorded}
        self.arrivals = [c.index for c in recorded]
        self.results: dict[int, tuple[float, dict[str, Any]]] = {}

    def ready(self, k: int, done: int) -> bool:
        return self.after.get(k) == done

    def submit(self, k: int, alpha: np.ndarray, kappa: np.ndarray) -> None:
        self.results[k] = self.fitness(k, alpha, kappa)

    def collect(self) -> tuple[int, float, dict[str, Any], str]:
        k = self.arrivals.pop(0)
        if k not in self.results:
            raise LegrError(f"replay: candidate {k} arrived before it was dispatched; the record is inconsistent")
        return (k, *self.results.pop(k), "replay")


def evolve(fitness: FitnessFn, state: EvolutionState, state_path: Path | None = None,
           on_candidate: Callable[[Candidate], None] | None = None) -> Candidate:
    """Run (or continue) the evolution serially until ``settings.candidates`` were evaluated."""
    return evolve_async(SerialPool(fitness), state, state_path, on_candidate)


def evolve_async(pool: Pool, state: EvolutionState, state_path: Path | None = None,
                 on_candidate: Callable[[Candidate], None] | None = None) -> Candidate:
    """Run (or continue) the evolution on ``pool``: dispatch whenever the pool has room and
    a child can be drawn, age the population in completion order. Candidates in flight
    when the search was interrupted are re-issued first, with their recorded transforms."""
    s = state.settings
    rng = np.random.default_rng()
    rng.bit_generator.state = state.rng_state
    sigma = np.asarray(state.sigma, dtype=np.float64)
    for p in sorted(state.pending, key=lambda p: p["index"]):
        pool.submit(p["index"], np.asarray(p["alpha"]), np.asarray(p["kappa"]))
    while len(state.history) < s.candidates:
        while _can_draw(state) and pool.ready(state.dispatched, len(state.history)):
            _dispatch(pool, state, sigma, rng)
        # One write per candidate: the last completion and the dispatches it allowed. A kill
        # before it resumes from the previous write, whose pending list re-issues the rest.
        if state_path is not None:
            io.write_json(state_path, state.to_json())
        if not state.pending:
            raise LegrError("evolution: nothing in flight and no candidate may be dispatched (a pool bug)")
        _complete(state, *pool.collect(), on_candidate)
    if state_path is not None:
        io.write_json(state_path, state.to_json())
    return state.best()


def _can_draw(state: EvolutionState) -> bool:
    """A next candidate exists and can be drawn: initial members always, a child once its
    tournament has ``sample`` completed members to choose from."""
    s, k = state.settings, state.dispatched
    return k < s.candidates and (k < s.population or len(state.population) >= s.sample)


def _dispatch(pool: Pool, state: EvolutionState, sigma: np.ndarray, rng: np.random.Generator) -> None:
    k = state.dispatched
    alpha, kappa = (_initial(k, state, sigma, rng) if k < state.settings.population
                    else _child(state, sigma, rng, k))
    state.pending.append({"index": k, "alpha": alpha.tolist(), "kappa": kappa.tolist(),
                          "dispatched_after": len(state.history)})
    state.rng_state = rng.bit_generator.state
    pool.submit(k, alpha, kappa)


def _complete(state: EvolutionState, k: int, value: float, info: dict[str, Any], worker: str,
              on_candidate: Callable[[Candidate], None] | None) -> None:
    pos = next((i for i, p in enumerate(state.pending) if p["index"] == k), None)
    if pos is None:
        raise LegrError(f"evolution: result for candidate {k}, which is not in flight")
    p = state.pending.pop(pos)
    cand = Candidate(k, p["alpha"], p["kappa"], float(value), info, worker, p["dispatched_after"])
    state.history.append(cand)
    state.population.append(k)
    if len(state.population) > state.settings.population:
        state.population.pop(0)  # aging: the oldest (first completed) dies, not the worst
    if on_candidate is not None:
        on_candidate(cand)


def replay(recorded: EvolutionState, fitness: FitnessFn) -> EvolutionState:
    """Re-run a finished search with ``fitness`` in one process, dispatching and completing
    candidates in the recorded order: an N-worker search's exact result, reproduced."""
    if recorded.pending or len(recorded.history) < recorded.settings.candidates:
        raise LegrError("replay needs a finished search (every candidate completed)")
    if any(c.dispatched_after < 0 for c in recorded.history):
        raise LegrError("replay: this search state predates dispatch records (dispatched_after)")
    fresh = EvolutionState.fresh(recorded.settings, np.asarray(recorded.sigma),
                                 [(np.asarray(a), np.asarray(k)) for a, k in recorded.seeds])
    evolve_async(ReplayPool(fitness, recorded.history), fresh)
    return fresh


def _initial(k: int, state: EvolutionState, sigma: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n, s = len(sigma), state.settings
    seeds = [(np.asarray(a, dtype=np.float64), np.asarray(kp, dtype=np.float64)) for a, kp in state.seeds]
    if not seeds:
        seeds = [(np.ones(n), np.zeros(n))]
    if k < len(seeds):
        return seeds[k][0].copy(), seeds[k][1].copy()
    if s.around_seeds:
        alpha, kappa = seeds[int(rng.integers(len(seeds)))]
    else:
        alpha, kappa = np.ones(n), np.zeros(n)
    return (alpha * np.exp(rng.normal(0.0, s.init_scale, n)),
            kappa + rng.normal(0.0, s.init_scale, n) * sigma)


def _child(state: EvolutionState, sigma: np.ndarray, rng: np.random.Generator,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    s = state.settings
    picks = rng.choice(len(state.population), size=s.sample, replace=False)
    members = {c.index: c for c in state.history}
    parent = max((members[state.population[i]] for i in picks), key=lambda c: c.fitness)
    step = mutation_step(k, s.candidates)
    return mutate(np.asarray(parent.alpha), np.asarray(parent.kappa), sigma * s.mutate_scale,
                  step * s.mutate_scale, s.mutate_fraction, rng)


def mutation_step(k: int, candidates: int) -> float:
    """Std of the log-alpha mutation: decays linearly from 1.0 over the run."""
    return max(1.0 - k / candidates, 1.0 / candidates)


def mutate(alpha: np.ndarray, kappa: np.ndarray, sigma: np.ndarray, step: float,
           fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Perturb about ``fraction`` of the layers, each layer at most once.

    ``step`` is the std of log-alpha's change, ``sigma`` the per-layer std of kappa's.
    """
    n = len(alpha)
    layers = rng.choice(n, size=max(1, int(math.ceil(fraction * n))), replace=False)
    alpha, kappa = alpha.copy(), kappa.copy()
    alpha[layers] *= np.exp(rng.normal(0.0, step, len(layers)))
    kappa[layers] += rng.normal(0.0, 1.0, len(layers)) * sigma[layers]
    return alpha, kappa
