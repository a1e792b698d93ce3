"""The search command's configuration: presets, flags, one frozen dataclass.

Resolution order: dataclass defaults < ``--preset`` (a budget) < ``--scoring`` (the
method: the product's ``v2`` or the ``paper``'s) < the device ``--profile`` (default
``cpu-ort``: its ``round_to``) < flags given explicitly on the command line. The resolved config is
written to ``config.json`` in the run directory.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from legr_edge.errors import LegrError

DEFAULT_TARGETS = (0.8, 0.6, 0.5, 0.4, 0.3, 0.2)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    model: str = "resnet20"
    dataset: str = "shapes"
    data_dir: str | None = None
    checkpoint: str | None = None
    out: str | None = None
    preset: str = "default"
    profile: str = "cpu-ort"             # target device profile: round_to and opset come from it
    device: str = "auto"
    seed: int = 0
    val_fraction: float = 0.1
    batch_size: int = 64
    # dense pretraining (when no checkpoint is given)
    pretrain_epochs: int = 8
    pretrain_lr: float = 0.1
    # the ranking search (defaults: the product's method, see SCORING for the paper's)
    targets: tuple[float, ...] = DEFAULT_TARGETS
    search_target: float | None = None   # default: the smallest target
    scoring: str = "v2"                  # v2 (the product's) | paper (the published method)
    score_norm: str = "zscore"           # per-layer normalisation of the base scores: zscore|mean|lamp|none
    group_reduce: str = "mean"           # a coupled channel's score: mean | sum of its members'
    score_source: str = "coupled"        # coupled: every weight a channel touches (writers, BatchNorm,
                                         # readers' inputs) | filter: a filter's own norm (the paper's)
    seed_population: bool = True         # seed identity, the paper's rule and uniform pruning
    stream_seeds: tuple[float, ...] = (0.25, 0.5)  # and uniform pruning with wider residual streams
    init_scale: float = 0.5              # std of log-alpha and kappa/sigma of random initial members
    mutate_scale: float = 0.5            # the same for mutations
    population: int = 24
    sample: int = 6
    candidates: int = 80
    recal_batches: int = 8               # BatchNorm recalibration batches before fitness (0 = off)
    fitness_val_limit: int = 5000        # validation images the fitness is measured on (0 = all)
    fitness_targets: tuple[float, ...] = ()  # score candidates at these targets (default: search target)
    tau: int = 10                        # SGD steps per candidate before recalibrating and scoring
    tau_lr: float = 0.01
    tau_batches: str = "common"          # common: every candidate trains on the same batches | per_candidate
    fitness: str = "loss"                # loss | accuracy, on the fixed validation subset
    finalists: int = 5                   # best candidates re-scored (with the seeds) on fresh batches
    final_rounds: int = 1                # fresh recalibration draws for that re-scoring
    final_tau: int | None = None         # SGD steps before each re-scoring (default: tau): a closer,
                                         # costlier proxy of fine-tuning, spent only on the finalists
    final_targets: str = "family"        # finalists re-scored at every family target | only the "search" one
    member_choice: str = "per_target"    # each member: the finalist best at its target | "one" ranking for all
    target_seeds: bool = True            # per_target: the uniform and stream seeds computed AT each family
                                         # target compete for that member too (re-scored there only)
    round_to: int = 1                    # overridden by the profile's unless given explicitly
    min_fraction: float = 0.1
    min_channels: int = 2
    ignore_layers: tuple[str, ...] = ()
    # the family
    finetune_epochs: int = 1
    finetune_lr: float = 0.01
    export: bool = True
    opset: int | None = None
    # latency as the cost (issue 8): targets are fractions of the table's dense prediction
    cost: str = "macs"                   # macs | latency
    latency_table: str | None = None     # RUN/latency_table_<profile>.json from the device
    targets_ms: tuple[float, ...] = ()   # absolute latency targets; converted into ``targets``
    staircase: bool = True               # latency cost: keep a wider width the device gives for free
    input_size: tuple[int, int] | None = None  # (H, W); default: the data set's or the model's
    # where candidates run (issue 11): not part of the result, so a run may resume with others
    workers: int = 0                     # Ray workers on this machine; 0 = this process, no Ray
    ray_address: str | None = None       # join an existing Ray cluster instead

    @property
    def distributed(self) -> bool:
        return bool(self.workers) or self.ray_address is not None

    def __post_init__(self):
        for t in self.targets:
            _check_fraction(t, "--targets value")
        if not self.targets:
            raise LegrError("--targets is empty")
        if self.search_target is not None:
            _check_fraction(self.search_target, "--search-target")
        if self.tau_batches not in ("common", "per_candidate"):
            raise LegrError(f"tau_batches must be 'common' or 'per_candidate', got {self.tau_batches!r}")
        if self.final_targets not in ("family", "search"):
            raise LegrError(f"--final-targets must be 'family' or 'search', got {self.final_targets!r}")
        if self.member_choice not in ("per_target", "one"):
            raise LegrError(f"--member-choice must be 'per_target' or 'one', got {self.member_choice!r}")
        if self.fitness not in ("accuracy", "loss"):
            raise LegrError(f"--fitness must be 'accuracy' or 'loss', got {self.fitness!r}")
        if self.scoring not in SCORING:
            raise LegrError(f"--scoring must be one of {', '.join(SCORING)}, got {self.scoring!r}")
        from legr_edge.prune.scoring import NORMALISATIONS, REDUCTIONS, SOURCES
        if self.score_norm not in NORMALISATIONS:
            raise LegrError(f"--score-norm must be one of {', '.join(NORMALISATIONS)}, got {self.score_norm!r}")
        if self.score_source not in SOURCES:
            raise LegrError(f"--score-source must be one of {', '.join(SOURCES)}, got {self.score_source!r}")
        if self.group_reduce not in REDUCTIONS:
            raise LegrError(f"--group-reduce must be one of {', '.join(REDUCTIONS)}, got {self.group_reduce!r}")
        for t in self.fitness_targets:
            _check_fraction(t, "--fitness-targets value")
        for s in self.stream_seeds:
            if not (isinstance(s, (int, float)) and 0.0 < s <= 1.0):
                raise LegrError(f"--stream-seeds values must be in (0, 1], got {s!r}")
        for name in ("init_scale", "mutate_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value < 100.0):
                raise LegrError(f"--{name.replace('_', '-')} must be a number in [0, 100), got {value!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise LegrError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise LegrError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("batch_size", "population", "sample", "candidates", "round_to"):
            if getattr(self, name) < 1:
                raise LegrError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.sample > self.population:
            raise LegrError(f"--sample ({self.sample}) must not exceed --population ({self.population})")
        _check_latency(self)
        for name in ("pretrain_epochs", "tau", "finetune_epochs", "recal_batches", "fitness_val_limit",
                     "finalists", "final_rounds"):
            if getattr(self, name) < 0:
                raise LegrError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.final_tau is not None and (not isinstance(self.final_tau, int) or self.final_tau < 0):
            raise LegrError(f"--final-tau must be an integer >= 0, got {self.final_tau!r}")
        _check_more(self)
        if not isinstance(self.workers, int) or self.workers < 0:
            raise LegrError(f"--workers must be an integer >= 0, got {self.workers!r}")

    @property
    def effective_search_target(self) -> float:
        return self.search_target if self.search_target is not None else min(self.targets)

    @property
    def effective_fitness_targets(self) -> tuple[float, ...]:
        return self.fitness_targets or (self.effective_search_target,)

    @property
    def effective_final_tau(self) -> int:
        return self.tau if self.final_tau is None else self.final_tau

    @property
    def effective_final_targets(self) -> tuple[float, ...]:
        """Where the finalists are re-scored: the fitness targets, plus (``family``) every
        target of the family, so a ranking that wins at the search target but collapses
        at a larger member loses the final choice."""
        fitness = self.effective_fitness_targets
        if self.final_targets == "search":
            return fitness
        return tuple(sorted(set(fitness) | set(self.targets)))

    @property
    def run_dir(self) -> str:
        return self.out or f"runs/{self.model.replace(':', '.').replace('/', '_')}-{self.dataset}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# What --scoring paper changes: the published method exactly (raw squared L2 norms, a
# coupled channel SUMS its members, identity-only seeding, alpha = exp(N(0,1)) and
# kappa = N(0, sigma_l), fitness = validation accuracy after tau SGD steps with stale
# BatchNorm statistics, the single best candidate). "v2" is the dataclass defaults.
# The method's keys override a preset (a preset is a budget); tau is budget, so a preset's
# tau (the paper preset's 200) wins over the paper method's default of 40.
SCORING: dict[str, dict[str, Any]] = {
    "v2": {},
    "paper": dict(score_norm="none", group_reduce="sum", score_source="filter", seed_population=False,
                  stream_seeds=(), init_scale=1.0, mutate_scale=1.0, recal_batches=0, fitness="accuracy",
                  finalists=0, target_seeds=False, tau_batches="per_candidate"),
}
SCORING_BUDGET: dict[str, dict[str, Any]] = {"v2": {}, "paper": {"tau": 40}}

PRESETS: dict[str, dict[str, Any]] = {
    # Seconds, for tests and checks: the small embedded data set, a few candidates.
    "smoke": dict(dataset="digits", pretrain_epochs=2, population=4, sample=2, candidates=6,
                  recal_batches=2, tau=2, finalists=2, final_rounds=1, finetune_epochs=1,
                  targets=(0.5, 0.3), batch_size=64),
    # The embedded default run (shapes + ResNet-20): 9-16 min on 2 CPU cores (README).
    "default": {},
    # For a long fine-tune (a real data set, many epochs): the default budget, each candidate
    # trained 50 steps before it is scored (the default: 10); the search takes 3-4x as long.
    # The fitness then favours networks that train back well over those that lose least
    # when cut: benchmarks/RESULTS.md, ranking_quality, legr_tau50.
    "thorough": dict(tau=50),
    # The published method and hyperparameters (LeGR, CIFAR): P=64, S=16, 400 candidates, tau=200.
    "paper": dict(scoring="paper", pretrain_epochs=200, population=64, sample=16, candidates=400, tau=200,
                  batch_size=128, tau_lr=0.01, finetune_epochs=200, finetune_lr=0.01),
}

FIELDS = {f.name for f in dataclasses.fields(SearchConfig)}


def resolve(explicit: dict[str, Any]) -> SearchConfig:
    """Build the config from a preset, the device profile and explicitly given options.

    Unknown keys are errors. The profile's ``round_to`` applies unless ``round_to`` is
    given explicitly; the export reads the profile's opset the same way.
    """
    unknown = sorted(set(explicit) - FIELDS)
    if unknown:
        raise LegrError(f"unknown configuration keys: {', '.join(unknown)}")
    preset = explicit.get("preset", "default")
    if preset not in PRESETS:
        raise LegrError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    scoring = explicit.get("scoring", PRESETS[preset].get("scoring", SearchConfig.scoring))
    if scoring not in SCORING:
        raise LegrError(f"--scoring must be one of {', '.join(SCORING)}, got {scoring!r}")
    values: dict[str, Any] = dict(SCORING_BUDGET[scoring])
    values.update(PRESETS[preset])
    values.update(SCORING[scoring])
    values.update(explicit)
    if "round_to" not in explicit:
        from legr_edge.device.profiles import load_profile
        values["round_to"] = load_profile(values.get("profile", SearchConfig.profile)).round_to
    values.update(explicit)
    if values.get("targets_ms"):
        values["targets"] = _fractions_of_dense(values)
    return SearchConfig(**values)


def _check_latency(cfg: SearchConfig) -> None:
    if cfg.cost not in ("macs", "latency"):
        raise LegrError(f"--cost must be 'macs' or 'latency', got {cfg.cost!r}")
    if cfg.cost == "latency" and not cfg.latency_table:
        raise LegrError("--cost latency needs --latency-table FILE (python -m legr_edge.latency_table RUN "
                        "builds it on the device)")
    if cfg.targets_ms and cfg.cost != "latency":
        raise LegrError("--targets-ms needs --cost latency")
    if any(not (isinstance(t, (int, float)) and t > 0) for t in cfg.targets_ms):
        raise LegrError(f"--targets-ms must be positive milliseconds, got {list(cfg.targets_ms)}")


def _fractions_of_dense(values: dict[str, Any]) -> tuple[float, ...]:
    """--targets-ms as fractions of the table's predicted dense latency (what the Pruner meets)."""
    from legr_edge.latency.table import LatencyTable

    if values.get("cost") != "latency" or not values.get("latency_table"):
        raise LegrError("--targets-ms needs --cost latency and --latency-table FILE")
    dense = LatencyTable.load(values["latency_table"]).dense_ms()
    too_slow = [t for t in values["targets_ms"] if t >= dense]
    if too_slow:
        raise LegrError(f"--targets-ms {too_slow}: not below the dense network's predicted {dense:.4f} ms "
                        f"({values['latency_table']})")
    return tuple(t / dense for t in values["targets_ms"])


def _check_fraction(value: float, name: str) -> None:
    if not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise LegrError(f"{name} must be in (0, 1], got {value!r}")


# package.module:factory, or a registered name (checked against the registry later)
_MODEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*)?$")


def _check_more(c: SearchConfig) -> None:
    """Values that would otherwise train on NaN, collide on disk or fail deep in the run."""
    if not isinstance(c.model, str) or not _MODEL_RE.match(c.model):
        raise LegrError(f"--model {c.model!r}: expected a registered name (see --list-models) or "
                        "package.module:factory")
    for name in ("pretrain_lr", "tau_lr", "finetune_lr"):
        v = getattr(c, name)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= 10:
            raise LegrError(f"--{name.replace('_', '-')} must be a finite number in (0, 10], got {v!r}")
    if not isinstance(c.seed, int) or not 0 <= c.seed < 2 ** 31:
        raise LegrError(f"--seed must be an integer in [0, 2**31), got {c.seed!r}")
    if not isinstance(c.min_fraction, (int, float)) or not 0.0 <= c.min_fraction < 1.0:
        raise LegrError(f"--min-fraction must be in [0, 1), got {c.min_fraction!r}")
    if c.min_channels < 1:
        raise LegrError(f"--min-channels must be >= 1, got {c.min_channels}")
    names = [member_name(c, t) for t in c.targets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        same = [t for t in c.targets if member_name(c, t) in dupes]
        raise LegrError(f"--targets {', '.join(map(str, same))} all become {', '.join(dupes)}; "
                        "targets must differ in their second decimal")
    if c.opset is not None and not 11 <= c.opset <= 23:
        raise LegrError(f"--opset must be between 11 and 23, got {c.opset}")
    if c.input_size is not None and (len(c.input_size) != 2 or min(c.input_size) < 1
                                     or max(c.input_size) > 4096):
        raise LegrError(f"--input-size must be H,W (or one number) between 1 and 4096, got {c.input_size!r}")


def member_name(cfg: SearchConfig, target: float) -> str:
    """legr_0.50 (MAC fraction), lat_0.50 (fraction of dense latency) or lat_1.2ms (--targets-ms):
    the family member's name and folder (two targets that give one name are refused)."""
    if cfg.cost != "latency":
        return f"legr_{target:.2f}"
    if cfg.targets_ms:
        ms = dict(zip(cfg.targets, cfg.targets_ms)).get(target)
        if ms is not None:
            return f"lat_{ms:g}ms"
    return f"lat_{target:.2f}"
