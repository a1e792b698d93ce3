"""Ranking quality: LeGR against what users would do instead, at equal MACs.

From ONE dense checkpoint per setting (data set + model) and with the SAME fine-tune
budget, prune to each MAC target with every method and compare test top-1 over
paired seeds:

- ``legr``: the product's learned ranking (``--scoring v2``: coupled base scores (a
  channel's magnitude in every weight it touches), z-scored per layer, group mean,
  evolution seeded with identity, the paper's rule, uniform and uniform with wider
  residual streams, well-scaled, a fitness of 10 SGD steps on common batches +
  BatchNorm recalibration + validation loss), searched at the smallest target; the
  finalists and seeds are re-scored at every target, the uniform and stream seeds
  computed AT each other target are re-scored there (``--target-seeds``), and each
  target's network is cut with the one best there (the product's ``--member-choice``);
- ``legr_no_target_seeds`` (``--methods``): the same search (its evolution is shared
  through the cache, see ``share_evolution``) without the seeds computed at each target:
  the product's method of the sixth session;
- ``legr_filter`` (``--methods``): the same method on the paper's base score, each
  filter's own squared norm (``--score-source filter``, the default up to the seventh
  session): the ablation of the coupled score, at every target;
- ``legr_one`` (``--methods``): the same search, every target cut with its one winning
  ranking (``--member-choice one``), to measure what the per-member choice adds;
- ``legr_paper``: the published method (``--scoring paper``), same search budget;
- ``l2``: global ranking by raw squared L2 filter norm, a group summing its members;
- ``uniform``: the same kept fraction in every channel group (best filters by L2);
- ``random``: a random global ranking (seeded per seed);
- ``wide_streams`` (``--methods``, a reference, not one of the "other" methods): no
  search, the product's first stream seed at every target (uniform pruning, each residual
  stream keeping u + 0.25 * (1 - u) of its channels, u its uniform share);
- ``tp_magnitude``: Torch-Pruning's ``MagnitudePruner(global_pruning=True,
  MagnitudeImportance(p=2))``, its ratio bisected until legr_edge's ``count_macs`` is
  at most the target and within 0.5% of it (never more MACs than the others get).

Per seed ``s``: LeGR's evolution seed is ``s``, every method is fine-tuned with seed
``s``, ``random`` ranks with seed ``s``, and every pruned network is first
recalibrated on the same ``s``-seeded training batches: the column ``recal`` is test
top-1 right there, BEFORE fine-tuning (the ranking's quality without fine-tuning
hiding it). Differences are PAIRED per seed: LeGR minus the best other method (by
mean), with a 95% confidence interval (Student's t over seeds).

The ablation (at the search target) switches each change of the product's method off
alone and reports its paired difference to the method it was switched off from
(``ABLATION_BASE``: ``legr_filter`` for the stream seeds, ``abl_no_stream`` for the
earlier changes, which were measured before the stream seeds joined the method; both keep
the own-norm score they were measured with). The coupled score, the newest change, is
measured at every target instead: ``legr`` minus ``legr_filter``, with ``--methods``.

Everything is cached under ``--work-dir`` (dense models, rankings, fine-tune results,
keyed by their settings), so a rerun or an interrupted run reuses what is done. Two
LeGR variants that differ only in the final choice share one evolution, and a network
that two methods cut identically is fine-tuned once (keyed by a hash of its weights).

Commands (from the repository root):

    # under 2 minutes: digits subset, 1 seed, targets 0.5 and 0.3, tiny budgets
    python -m benchmarks.ranking_quality --quick
    # the full benchmark (see benchmarks/README.md for its budget and wall time)
    python -m benchmarks.ranking_quality
    # one setting, more seeds
    python -m benchmarks.ranking_quality --settings shapes/resnet20 --seeds 0,1,2,3,4,5,6,7

Writes ``--out`` (default benchmarks/results/ranking_quality/[quick/]): results.csv
(one row per setting, method, target and seed), summary.csv, paired.csv, ablation.csv,
results.json, ranking_quality.png, and its section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from legr_edge import io, workflow  # noqa: E402
from legr_edge.config import SCORING, SearchConfig  # noqa: E402
from legr_edge.data.base import SubsetSet  # noqa: E402
from legr_edge.fitness import FitnessEvaluator, FitnessSettings  # noqa: E402
from legr_edge.errors import LegrError  # noqa: E402
from legr_edge.prune.coupling import execution_order, stream_groups  # noqa: E402
from legr_edge.prune.cost import count_macs  # noqa: E402
from legr_edge.prune.scoring import base_scores, uniform_scores, within_group_ranks  # noqa: E402
from legr_edge.prune.surgery import prune_model  # noqa: E402
from legr_edge.train import SGDSettings, evaluate, fit  # noqa: E402

log = logging.getLogger("benchmarks.ranking_quality")

NAME = "ranking_quality"
METHODS = ("legr", "legr_paper", "l2", "uniform", "random", "tp_magnitude")
# The variants measured before the stream seeds joined the product's method keep that method
# (no stream seeds, filter base scores), so their cached searches stay valid; ``abl_no_stream``
# is that method.
BEFORE_STREAMS: dict[str, Any] = {"stream_seeds": (), "target_seeds": False, "score_source": "filter"}
LEGR_VARIANTS: dict[str, dict[str, Any]] = {
    "legr": {},
    # the product's method before the seeds computed at every family target joined it (the
    # same evolution as legr's, shared through the cache; only the member choice differs)
    "legr_no_target_seeds": {"target_seeds": False},
    # the product's method on the paper's base score, a filter's own norm (--score-source
    # filter, the default up to the seventh session)
    "legr_filter": {"score_source": "filter"},
    "legr_paper": dict(SCORING["paper"], scoring="paper"),
    # the ablation: each change of the product's method switched off alone
    "abl_no_stream": dict(BEFORE_STREAMS),  # no stream seeds (the method of earlier sessions)
    # ... and each earlier change switched off alone from that method (see ABLATION_BASE)
    "abl_no_norm": {"score_norm": "none", **BEFORE_STREAMS},
    "abl_group_sum": {"group_reduce": "sum", **BEFORE_STREAMS},
    "abl_no_seeds": {"seed_population": False, **BEFORE_STREAMS},
    "abl_paper_scales": {"init_scale": 1.0, "mutate_scale": 1.0, **BEFORE_STREAMS},
    "abl_no_recal": {"recal_batches": 0, **BEFORE_STREAMS},
    "abl_accuracy": {"fitness": "accuracy", **BEFORE_STREAMS},
    "abl_no_final": {"finalists": 0, **BEFORE_STREAMS},
    # not an ablation: score candidates at the search target and 0.5 (--multi-target)
    "legr_multi": {"fitness_targets": "SEARCH,0.5", **BEFORE_STREAMS},
    # not an ablation: every channel group keeps at least a quarter of its channels (the
    # product's floor is a tenth), against the narrow bottlenecks searched 0.2 members have
    "legr_floor25": {"min_fraction": 0.25, **BEFORE_STREAMS},
    # not an ablation: a fitness closer to what fine-tuning makes of a candidate (more SGD
    # steps before recalibrating and measuring; the product takes 10, --preset thorough 50)
    "legr_tau50": {"tau": 50, **BEFORE_STREAMS},
    # not an ablation: the search as the product's, the finalists re-scored after 100 steps
    "legr_ftau100": {"final_tau": 100, **BEFORE_STREAMS},
}
# variant keys that change the pruner's floors or rounding, not only the search
PRUNER_FIELDS = ("round_to", "min_fraction", "min_channels")
ABLATIONS = tuple(k for k in LEGR_VARIANTS if k.startswith("abl_"))
# what an ablation variant is compared with: the method it switches one change off from. The
# ablation keeps the own-norm score it was measured with: abl_no_stream is legr_filter without
# the stream seeds (and the seeds at every target, made of them); the coupled score itself is
# measured at every target by legr minus legr_filter (variant_pairs)
ABLATION_BASE = {k: "legr_filter" if k == "abl_no_stream" else "abl_no_stream" for k in ABLATIONS}
# what the ablation step runs: the variants, and the bases that are not variants themselves
ABLATION_RUNS = ABLATIONS + tuple(sorted(set(ABLATION_BASE.values()) - set(ABLATIONS)))
# legr's own search, every member cut with its one winning ranking (--member-choice one)
LEGR_ONE = "legr_one"
# a hand-made reference (the stream seed without search); not counted among the "other" methods
WIDE_STREAMS = "wide_streams"
CACHE_VERSION = 3  # bump when a method's code changes: cached fine-tune results are keyed by it
COLUMNS = ("setting", "method", "target", "seed", "macs", "macs_ratio", "recal_top1",
           "val_top1", "test_top1", "finetune_s")
SUMMARY_COLUMNS = ("setting", "target", "method", "n", "macs_ratio", "test_top1_mean", "test_top1_std",
                   "recal_top1_mean", "recal_top1_std")
PAIRED_COLUMNS = ("setting", "target", "metric", "versus", "n", "diff_mean", "ci95_low", "ci95_high")


@dataclasses.dataclass(frozen=True)
class Budget:
    """Everything that changes a result: part of every cache key."""

    model: str = "resnet20"
    train_limit: int = 0          # 0 = the whole training split
    batch_size: int = 64
    pretrain_epochs: int = 30
    finetune_epochs: int = 4
    finetune_lr: float = 0.01
    population: int = 12
    sample: int = 4
    candidates: int = 32
    recal_batches: int = 8
    paper_tau: int = 20           # legr_paper's tau steps per candidate
    tau_lr: float = 0.01
    round_to: int = 1
    tp_tolerance: float = 0.005   # TP's MACs at most the target and within this fraction below it

    # The LeGR search budget: part of a LeGR variant's key (variant_key, through the
    # recorded ranking settings), not of the fine-tune rows of the other methods.
    SEARCH_FIELDS = ("population", "sample", "candidates", "paper_tau", "tau_lr")

    def finetune_key(self) -> str:
        return self.key(*[f.name for f in dataclasses.fields(self) if f.name not in self.SEARCH_FIELDS])

    def key(self, *fields: str) -> str:
        d = {f: getattr(self, f) for f in fields}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


# Full-mode budgets per setting ("data/model"), chosen to fit about an hour on 2 cores.
# ResNet-20 searches with the product's default budget (P=24, S=6, 80 candidates);
# ResNet-56, whose candidates cost about 4x as much, with 48.
FULL = {"shapes/resnet20": Budget(pretrain_epochs=15, finetune_epochs=1, population=24, sample=6, candidates=80),
        "shapes/resnet56": Budget(model="resnet56", pretrain_epochs=20, finetune_epochs=1, population=16,
                                  sample=4, candidates=48),
        "digits/resnet20": Budget(pretrain_epochs=30, finetune_epochs=3)}
FULL_SEEDS = {"shapes/resnet20": "0,1,2,3,4", "shapes/resnet56": "0,1,2,3,4", "digits/resnet20": "0,1"}
FULL_TARGETS, QUICK_TARGETS = (0.7, 0.5, 0.3, 0.2), (0.5, 0.3)
CACHED_ONLY = False  # --cached-only: report what the cache holds, compute nothing
FINETUNE = True      # --no-finetune: recalibrated top-1 only
FINETUNE_TARGETS: set[float] | None = None  # --finetune-targets: the others recalibrated only
QUICK = Budget(train_limit=640, pretrain_epochs=6, finetune_epochs=2, population=3, sample=2,
               candidates=5, recal_batches=4, paper_tau=5)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="under 2 minutes: digits subset, 1 seed, 2 targets")
    p.add_argument("--out", type=Path, help="result folder (default benchmarks/results/ranking_quality/)")
    p.add_argument("--work-dir", type=Path, default=common.BENCH_DIR / "work",
                   help="cache of dense checkpoints, rankings and fine-tune results (git-ignored)")
    p.add_argument("--settings", help="comma-separated data/model pairs (default: "
                                      + ",".join(FULL) + "; quick: digits/resnet20)")
    p.add_argument("--targets", help="comma-separated MAC targets (default 0.7,0.5,0.3,0.2; quick 0.5,0.3)")
    p.add_argument("--seeds", help="comma-separated seeds (default: 5 per shapes setting, 2 for digits; quick 0)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated subset of " + ",".join(METHODS) + "; also legr_one, " + WIDE_STREAMS
                   + " and the LeGR variants: " + ",".join(k for k in LEGR_VARIANTS if k != "legr"))
    p.add_argument("--ablation", default="shapes/resnet20",
                   help="settings that get the ablation at the search target ('' for none)")
    p.add_argument("--no-finetune", action="store_true",
                   help="score every pruned network after recalibration only (no fine-tuning): a cheaper run")
    p.add_argument("--finetune-targets",
                   help="fine-tune only at these targets, the others recalibrated only (e.g. a longer "
                        "--finetune-epochs where pruning hurts most)")
    p.add_argument("--ablation-seeds", type=int, default=3, help="how many of the seeds the ablation runs (3)")
    p.add_argument("--cached-only", action="store_true",
                   help="compute nothing: report the rows the cache holds (e.g. after an interrupted run)")
    p.add_argument("--multi-target", action="store_true",
                   help="also run legr_multi (fitness at the search target and 0.5) at every target")
    p.add_argument("--variant", default="",
                   help="a name for a partial run (some settings or methods, another machine): its "
                        "own section of RESULTS.md and its own result folder, the full one left alone")
    p.add_argument("--pretrain-epochs", type=int, help="override the per-setting default")
    p.add_argument("--finetune-epochs", type=int, help="override the per-setting default")
    p.add_argument("--candidates", type=int,
                   help="LeGR candidates per search (default: the setting's: 80 on shapes/resnet20, 48 on resnet56)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int,
                   help="torch intra-op threads (default: torch's; --quick: 1, robust on a busy machine)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def budget_for(setting: str, args: argparse.Namespace) -> Budget:
    dataset, model = setting.split("/")
    b = dataclasses.replace(QUICK, model=model) if args.quick else FULL.get(setting, Budget(model=model))
    over = {}
    for name in ("pretrain_epochs", "finetune_epochs", "candidates"):
        if getattr(args, name) is not None:
            over[name] = getattr(args, name)
    return dataclasses.replace(b, **over)


# ----- one setting ---------------------------------------------------------------------

@dataclasses.dataclass
class Bench:
    """The shared state of one setting: data, dense model, pruner."""

    setting: str
    budget: Budget
    root: Path               # work-dir/<model>-<dataset>-<dense key>
    ctx: Any                 # legr_edge.workflow.Context
    dense_row: dict[str, Any]
    targets: list[float]

    @property
    def dataset(self) -> str:
        return self.setting.split("/")[0]

    @property
    def pruner(self):
        return self.ctx.pruner


def load_data(dataset: str, budget: Budget):
    from legr_edge.data import load_dataset

    data = load_dataset(dataset, val_fraction=0.1, seed=0)
    if budget.train_limit and budget.train_limit < len(data.train):
        idx = np.sort(np.random.default_rng(0).permutation(len(data.train))[:budget.train_limit])
        data = dataclasses.replace(data, train=SubsetSet(data.train, idx))
    return data


def search_config(dataset: str, budget: Budget, targets: list[float], seed: int, out: Path,
                  **over: Any) -> SearchConfig:
    values = dict(
        model=budget.model, dataset=dataset, out=str(out), seed=seed, batch_size=budget.batch_size,
        pretrain_epochs=budget.pretrain_epochs, targets=tuple(targets), search_target=min(targets),
        population=budget.population, sample=budget.sample, candidates=budget.candidates,
        recal_batches=budget.recal_batches, tau_lr=budget.tau_lr, round_to=budget.round_to,
        finetune_epochs=budget.finetune_epochs, finetune_lr=budget.finetune_lr, export=False)
    values.update(over)
    if values.get("scoring") == "paper":
        values["tau"] = budget.paper_tau
    if values.get("fitness_targets") == "SEARCH,0.5":
        values["fitness_targets"] = (min(targets), 0.5)
    return SearchConfig(**values)


def prepare(setting: str, budget: Budget, targets: list[float], work: Path, device) -> Bench:
    """Load the data and the dense model (trained once, cached under ``work``)."""
    dataset = setting.split("/")[0]
    root = work / f"{budget.model}-{dataset}-{budget.key('model', 'train_limit', 'batch_size', 'pretrain_epochs')}"
    data = load_data(dataset, budget)
    cfg = search_config(dataset, budget, targets, 0, root)
    t0 = time.perf_counter()
    dense, dense_row = workflow.dense_model(cfg, data, root, device)
    log.info("%s: dense ready in %.0fs: test top-1 %.2f, %.2f MMACs (%s)", setting,
             time.perf_counter() - t0, dense_row["test_top1"], dense_row["macs"] / 1e6, root)
    ctx = workflow.make_context(cfg, root, device, data, dense)
    return Bench(setting, budget, root, ctx, dense_row, targets)


def variant_key(bench: Bench, variant: str, seed: int = 0) -> str:
    """Hash of everything the ranking of ``variant`` depends on (legr_edge's recorded
    ranking settings, the product defaults included), so a change of the product's method
    gets new searches and new fine-tune rows instead of stale cached ones."""
    cfg = search_config(bench.dataset, bench.budget, bench.targets, seed, bench.root, **LEGR_VARIANTS[variant])
    settings = dict(workflow._ranking_settings(cfg), seed=None)
    if tuple(bench.targets) not in (FULL_TARGETS, QUICK_TARGETS):
        # the family re-scoring depends on the targets; the usual ones keep their old keys
        settings["targets"] = list(bench.targets)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


# ranking settings that act only after the evolution (the final choice): variants that differ
# in nothing else share one evolution (share_evolution)
FINAL_CHOICE_KEYS = ("finalists", "final_rounds", "final_targets", "member_choice", "final_tau", "target_seeds")


def evolution_key(bench: Bench, variant: str, seed: int) -> str:
    """Hash of everything a LeGR variant's EVOLUTION depends on (its recorded ranking
    settings less the final-choice ones, the seed and the search target)."""
    cfg = search_config(bench.dataset, bench.budget, bench.targets, seed, bench.root, **LEGR_VARIANTS[variant])
    settings = {k: v for k, v in workflow._ranking_settings(cfg).items() if k not in FINAL_CHOICE_KEYS}
    settings["search_target"] = cfg.effective_search_target
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def share_evolution(root: Path, run: Path, key: str) -> bool:
    """Start ``run`` from a finished evolution of the same ``key`` cached beside it (copy its
    search_state.json and search_log.csv): the search then only redoes the final choice.
    The evolution is deterministic given its settings and seed, so this is the run a fresh
    search would make, without paying for it twice. True when one was copied."""
    if (run / "search_state.json").exists():
        return False
    for other in sorted(root.glob("*/evolution_key")):
        src = other.parent
        if src == run or other.read_text().strip() != key or not (src / "ranking.json").exists():
            continue
        for name in ("search_state.json", "search_log.csv"):
            io.write_bytes(run / name, (src / name).read_bytes())
        log.info("%s: evolution shared from %s (same settings up to the final choice)", run.name, src.name)
        return True
    return False


def share_final_choice(ctx, root: Path, key: str) -> bool:
    """Without ``--target-seeds``, the final choice is the one a variant WITH them made, less
    the seeds computed at the targets (its re-scoring is the same deterministic computation):
    rebuild this run's ranking.json from that variant's ``final`` instead of re-scoring every
    finalist again. True when one was rebuilt."""
    cfg, run = ctx.cfg, ctx.run
    if cfg.target_seeds or (run / "ranking.json").exists() or not (run / "search_state.json").exists():
        return False
    ours = workflow._ranking_settings(cfg)
    for other in sorted(root.glob("*/evolution_key")):
        src = other.parent / "ranking.json"
        if other.parent == run or other.read_text().strip() != key or not src.exists():
            continue
        done = json.loads(src.read_text())
        if {k: v for k, v in done["settings"].items() if k != "target_seeds"} != ours:
            continue
        from legr_edge.evolution import load_state
        state = load_state(run / "search_state.json")
        best = state.candidate(done["best_index"])
        members = workflow.choose_members(ctx, state, best, done["final"])
        workflow.write_ranking(ctx, best, done["final"], members)
        log.info("%s: final choice rebuilt from %s's re-scoring (without its target seeds)", run.name,
                 other.parent.name)
        return True
    return False


def legr_scores(bench: Bench, seed: int, variant: str, one: bool = False) -> dict[float, np.ndarray] | None:
    """Search (or reuse) the ranking of LeGR variant ``variant`` with evolution seed ``seed``;
    the channel scores each target's network is cut with: the product's member choice, or
    (``one``) the single winning ranking at every target."""
    b, over = bench.budget, LEGR_VARIANTS[variant]
    run = bench.root / f"{variant}-{variant_key(bench, variant)}-t{min(bench.targets):g}-seed{seed}"
    if CACHED_ONLY and not (run / "ranking.json").exists():
        return None
    run.mkdir(parents=True, exist_ok=True)
    key = evolution_key(bench, variant, seed)
    share_evolution(bench.root, run, key)
    (run / "evolution_key").write_text(key)
    cfg = search_config(bench.dataset, b, bench.targets, seed, run, **over)
    dense, coupling = bench.ctx.dense, bench.pruner.coupling
    ctx = dataclasses.replace(bench.ctx, cfg=cfg, run=run, evaluators={}, pruner=variant_pruner(bench, variant),
                              scores=base_scores(dense, coupling, cfg.score_norm, cfg.group_reduce,
                                                 cfg.score_source))
    t0 = time.perf_counter()
    share_final_choice(ctx, bench.root, key)
    ranking = workflow.search_ranking(ctx)
    log.info("%s: %s ranking (seed %d) ready in %.0fs", bench.setting, variant, seed, time.perf_counter() - t0)
    if one:
        return {t: ctx.scores.transformed(ranking.alpha, ranking.kappa) for t in bench.targets}
    return {t: ctx.scores.transformed(*ranking.for_target(t)) for t in bench.targets}


def l2_scores(bench: Bench) -> np.ndarray:
    raw = base_scores(bench.ctx.dense, bench.pruner.coupling, "none", "sum", "filter")
    return raw.transformed(*raw.identity())


def random_scores(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(10_000 + seed).random(n)


def variant_pruner(bench: Bench, method: str):
    """The pruner a method cuts with: the setting's, or a LeGR variant's own floors."""
    over = {k: v for k, v in LEGR_VARIANTS.get(method, {}).items() if k in PRUNER_FIELDS}
    return dataclasses.replace(bench.pruner, **over) if over else bench.pruner


def masked_net(bench: Bench, scores: np.ndarray | dict[float, np.ndarray], target: float,
               pruner=None) -> nn.Module:
    """The dense model cut at ``target`` by ``scores`` (or by ``scores[target]``)."""
    if isinstance(scores, dict):
        scores = scores[target]
    pruner = pruner or bench.pruner
    mask, _ = pruner.prune_to(scores, target)
    return prune_model(bench.ctx.dense, pruner.coupling, mask)


def wide_streams_net(bench: Bench, target: float, share: float = 0.25) -> nn.Module:
    """Uniform pruning at ``target`` with every residual stream keeping u + share * (1 - u) of
    its channels (u: its uniform share) and the other groups one common share of the rest:
    the product's stream seed, without any search. Filters chosen by raw L2, as uniform's."""
    pr = bench.pruner
    l2, group = l2_scores(bench), pr.coupling.group_of_channel
    mask, _ = pr.prune_to(uniform_scores(l2, group), target)
    u = np.bincount(group[mask], minlength=len(pr.coupling.groups)) / np.bincount(group)
    counts = pr.stream_counts(l2, stream_groups(pr.coupling, bench.ctx.dense), u + share * (1 - u), target)
    if counts is None:
        raise LegrError(f"{bench.setting}: the wide residual streams alone exceed {target:g} of the MACs")
    mask = pr.mask_from_counts(l2, within_group_ranks(l2, group), counts)
    return prune_model(bench.ctx.dense, pr.coupling, mask)


# ----- Torch-Pruning's global magnitude pruner, bisected to the target ------------------

def tp_prune(dense: nn.Module, example: torch.Tensor, ratio: float, ignored: list[nn.Module],
             max_ratio: float) -> nn.Module:
    import torch_pruning as tp

    net = copy.deepcopy(dense).eval()
    names = {m: n for n, m in dense.named_modules()}
    ignored_copy = [net.get_submodule(names[m]) for m in ignored]
    pruner = tp.pruner.MagnitudePruner(
        net, example, importance=tp.importance.MagnitudeImportance(p=2), global_pruning=True,
        pruning_ratio=ratio, max_pruning_ratio=max_ratio, ignored_layers=ignored_copy)
    pruner.step()
    return net


def tp_at_target(bench: Bench, target: float) -> nn.Module:
    """Bisect TP's global pruning ratio: the network with the most MACs that are still at
    most the target (within tolerance below it), so TP never gets more MACs than the rest."""
    dense, example = bench.ctx.dense, workflow.example_input(bench.ctx.info, bench.ctx.device)
    classifier = execution_order(dense, example, (nn.Conv2d, nn.Linear))[-1]
    ignored, dense_macs = [dense.get_submodule(classifier)], bench.pruner.dense_macs
    max_ratio = 1.0 - bench.ctx.cfg.min_fraction  # the same per-layer floor as legr_edge's Pruner
    lo, hi, best = 0.0, max_ratio, None
    for _ in range(30):
        ratio = (lo + hi) / 2
        net = tp_prune(dense, example, ratio, ignored, max_ratio)
        got = count_macs(net, example) / dense_macs
        if got <= target and (best is None or got > best[1]):
            best = (net, got, ratio)
        if got <= target and target - got <= bench.budget.tp_tolerance * target:
            break
        lo, hi = (ratio, hi) if got > target else (lo, ratio)
    if best is None:
        raise RuntimeError(f"Torch-Pruning cannot reach {target} of the MACs")
    log.info("%s: TP magnitude at target %.2f: ratio %.4f gives MACs %.4f", bench.setting, target,
             best[2], best[1])
    return best[0]


def tp_cached(bench: Bench, nets: dict[float, nn.Module], target: float) -> nn.Module:
    """TP's pruning does not depend on the seed: bisect once per target, copy per seed."""
    if target not in nets:
        nets[target] = tp_at_target(bench, target)
    return copy.deepcopy(nets[target])


# ----- recalibrate, fine-tune and evaluate ---------------------------------------------

def finetune_row(bench: Bench, method: str, target: float, seed: int, net: nn.Module,
                 finetune: bool = True) -> dict[str, Any]:
    ctx, b = bench.ctx, bench.budget
    example = workflow.example_input(ctx.info, ctx.device)
    macs = count_macs(net, example)
    # the same seed-s recalibration batches for every method (not the search's: round 99)
    recal = FitnessEvaluator(ctx.data, ctx.info, ctx.device,
                             FitnessSettings(recal_batches=b.recal_batches, batch_size=b.batch_size,
                                             val_limit=1, seed=seed), round=99)
    recal(net)
    recal_top1, _ = evaluate(net, ctx.data.test, ctx.info, ctx.device)
    row = {"setting": bench.setting, "method": method, "target": target, "seed": seed, "macs": macs,
           "macs_ratio": macs / bench.pruner.dense_macs, "recal_top1": recal_top1,
           "val_top1": None, "test_top1": None, "finetune_s": None}
    if finetune:
        settings = SGDSettings(lr=b.finetune_lr, nesterov=True, schedule="step", batch_size=b.batch_size)
        t0 = time.perf_counter()
        net, val = fit(net, ctx.data.train, ctx.data.val, ctx.info, b.finetune_epochs, settings,
                       ctx.device, seed, f"{method}@{target:g} s{seed}")
        test, _ = evaluate(net, ctx.data.test, ctx.info, ctx.device)
        row.update(val_top1=val, test_top1=test, finetune_s=time.perf_counter() - t0)
    return row


def cached_row(bench: Bench, method: str, target: float, seed: int, make_net,
               finetune: bool = True) -> dict[str, Any]:
    finetune = finetune and FINETUNE and (FINETUNE_TARGETS is None or target in FINETUNE_TARGETS)
    key = bench.budget.finetune_key()
    if method == LEGR_ONE:
        name = f"{method}-{variant_key(bench, 'legr')}"
    else:
        name = f"{method}-{variant_key(bench, method)}" if method in LEGR_VARIANTS else method
    stem = bench.root / f"finetune-v{CACHE_VERSION}-{key}" / f"{name}-t{target:g}-seed{seed}"
    path = Path(f"{stem}{'' if finetune else '-recal'}.json")
    if path.exists():
        return json.loads(path.read_text())
    if CACHED_ONLY:  # report what there is: the fine-tuned row, else the recalibrated-only one
        for done in (Path(f"{stem}.json"), Path(f"{stem}-recal.json")):
            if done.exists():
                return json.loads(done.read_text())
        return None
    net = make_net()
    # the same network (another method that cut the very same channels) is fine-tuned once
    same = bench.root / f"finetune-v{CACHE_VERSION}-{key}" / "by-net" / (
        f"{net_digest(net)}-t{target:g}-seed{seed}{'' if finetune else '-recal'}.json")
    if same.exists():
        row = dict(json.loads(same.read_text()), method=method)
        log.info("%s@%g seed %d: the same network as %s's, its row reused", method, target, seed,
                 json.loads(same.read_text())["method"])
    else:
        row = finetune_row(bench, method, target, seed, net, finetune)
        io.write_json(same, row)
    io.write_json(path, row)
    return row


def net_digest(net: nn.Module) -> str:
    """Hash of a network's state (every tensor's name, shape and bytes): equal for the same
    cut of the same dense model, whichever method made it."""
    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def run_setting(bench: Bench, methods: list[str], seeds: list[int], ablation: int, bar) -> list[dict[str, Any]]:
    """Every method at every target and seed, then the ablation on the first ``ablation`` seeds."""
    l2 = l2_scores(bench)
    group = bench.pruner.coupling.group_of_channel
    fixed = {"l2": l2, "uniform": uniform_scores(l2, group)}
    tp_nets: dict[float, nn.Module] = {}
    rows = []
    search_target = min(bench.targets)
    for seed in seeds:
        scores = dict(fixed, random=random_scores(len(l2), seed))
        for variant in [m for m in methods if m in LEGR_VARIANTS]:
            scores[variant] = legr_scores(bench, seed, variant)
        if LEGR_ONE in methods:
            scores[LEGR_ONE] = legr_scores(bench, seed, "legr", one=True)
        for target in bench.targets:
            for method in methods:
                if method == "tp_magnitude":
                    make = lambda t=target: tp_cached(bench, tp_nets, t)
                elif method == WIDE_STREAMS:
                    make = lambda t=target: wide_streams_net(bench, t)
                else:
                    make = lambda m=method, t=target: masked_net(bench, scores[m], t, variant_pruner(bench, m))
                rows.append(cached_row(bench, method, target, seed, make))
                bar.update(1)
    for seed in seeds[:ablation]:
        for variant in ABLATION_RUNS:
            sc = legr_scores(bench, seed, variant)
            rows.append(cached_row(bench, variant, search_target, seed,
                                   lambda sc=sc, v=variant: masked_net(bench, sc, search_target,
                                                                       variant_pruner(bench, v))))
            bar.update(1)
    return unique_rows(r for r in rows if r is not None)


def unique_rows(rows) -> list[dict[str, Any]]:
    """One row per setting, method, target and seed: a variant listed in --methods is also
    reached by the ablation loop, and its rows must not count twice in the means."""
    return list({(r["setting"], r["method"], r["target"], r["seed"]): r for r in rows}.values())


# ----- which normalisation: identity rankings, recalibrated, no fine-tuning ---------------

NORM_STUDY = [("zscore", "mean"), ("zscore", "sum"), ("mean", "mean"), ("mean", "sum"), ("lamp", "mean"),
              ("none", "mean"), ("none", "sum")]


def norm_study(bench: Bench, seeds: list[int]) -> list[dict[str, Any]]:
    """Test top-1 right after recalibration of the IDENTITY ranking under each score
    normalisation and group reduction (no search, no fine-tuning), next to uniform and TP:
    the measurement behind the product's default normalisation."""
    dense, coupling = bench.ctx.dense, bench.pruner.coupling
    l2 = l2_scores(bench)
    rankings = {f"identity {n}/{r}": (lambda n=n, r=r: base_scores(dense, coupling, n, r))
                for n, r in NORM_STUDY}
    rows, tp_nets = [], {}
    for target in bench.targets:
        for seed in seeds:
            for name, make in rankings.items():
                ls = make()
                row = cached_row(bench, name.replace(" ", "_").replace("/", "-"), target, seed,
                                 lambda ls=ls: masked_net(bench, ls.transformed(*ls.identity()), target),
                                 finetune=False)
                rows.append(dict(row, method=name) if row else None)
            for name, make in (("uniform", lambda: masked_net(bench, uniform_scores(l2, coupling.group_of_channel),
                                                              target)),
                               ("tp_magnitude", lambda: tp_cached(bench, tp_nets, target))):
                row = cached_row(bench, name, target, seed, make, finetune=False)
                rows.append(dict(row, method=name) if row else None)
    return rows


def operator_spread(bench: Bench, n: int = 200) -> list[dict[str, Any]]:
    """How random initial candidates spread at the search target: the share of channel
    groups cut to their floor and left untouched, under the paper's operator (raw L2
    sums, alpha = exp(N(0,1)), kappa = N(0, sigma_l)) and the product's (z-scored means,
    perturbations of the seeds at 0.5 layer-stds). No training: pruning masks only."""
    from legr_edge.evolution import EvolutionSettings, EvolutionState, _initial

    coupling, pruner, target = bench.pruner.coupling, bench.pruner, min(bench.targets)
    group = coupling.group_of_channel
    sizes = np.bincount(group, minlength=len(coupling.groups))
    floors = pruner.group_counts(np.zeros(len(sizes)))
    rows = []
    for name, norm, reduce, scale, seeded in (("paper", "none", "sum", 1.0, False),
                                              ("product (v2)", "zscore", "mean", 0.5, True)):
        scores = base_scores(bench.ctx.dense, coupling, norm, reduce)
        ctx = dataclasses.replace(bench.ctx, scores=scores)
        seeds = list(workflow.seed_transforms(ctx).values()) if seeded else []
        settings = EvolutionSettings(population=n + len(seeds), sample=1, candidates=n + len(seeds),
                                     init_scale=scale, around_seeds=seeded)
        state = EvolutionState.fresh(settings, scores.sigma, seeds)
        rng = np.random.default_rng(0)
        at_floor, at_full = [], []
        for k in range(len(seeds), len(seeds) + n):
            mask, _ = pruner.prune_to(scores.transformed(*_initial(k, state, scores.sigma, rng)), target)
            counts = np.bincount(group[mask], minlength=len(sizes))
            at_floor.append(float(np.mean(counts <= floors)))
            at_full.append(float(np.mean(counts >= sizes)))
        rows.append({"operator": name, "candidates": n, "target": target,
                     "groups_at_floor": float(np.mean(at_floor)), "groups_untouched": float(np.mean(at_full))})
    return rows


def norm_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    targets = sorted({r["target"] for r in rows}, reverse=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    header = ["ranking"] + [f"top-1 @ {t:g} (MACs)" for t in targets]
    out = []
    for m in methods:
        cells = []
        for t in targets:
            g = _by(rows, method=m, target=t)
            cells.append(f"{common.mean_std([r['recal_top1'] for r in g])[0]:.2f} "
                         f"({common.mean_std([r['macs_ratio'] for r in g])[0]:.3f})")
        out.append([m] + cells)
    return header, out


# ----- statistics, tables, plot ---------------------------------------------------------

# Student's t, two-sided 95%, by degrees of freedom (1..30); beyond 30, 1.96 is close enough.
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
       2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
       2.052, 2.048, 2.045, 2.042)


def paired_ci(diffs: list[float]) -> tuple[float, float, float]:
    """Mean of paired differences and its 95% confidence interval (nan width for n=1)."""
    n = len(diffs)
    mean = float(np.mean(diffs))
    if n < 2:
        return mean, float("nan"), float("nan")
    half = (T95[n - 2] if n - 1 <= len(T95) else 1.96) * float(np.std(diffs, ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


def _by(rows, **match) -> list[dict[str, Any]]:
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = sorted({(r["setting"], r["target"], r["method"]) for r in rows}, key=lambda k: (k[0], -k[1], k[2]))
    for setting, target, method in keys:
        g = _by(rows, setting=setting, target=target, method=method)
        test = [r["test_top1"] for r in g if r["test_top1"] is not None]
        t_mean, t_std = common.mean_std(test)
        r_mean, r_std = common.mean_std([r["recal_top1"] for r in g])
        out.append({"setting": setting, "target": target, "method": method, "n": len(g),
                    "macs_ratio": common.mean_std([r["macs_ratio"] for r in g])[0],
                    "test_top1_mean": t_mean, "test_top1_std": t_std,
                    "recal_top1_mean": r_mean, "recal_top1_std": r_std})
    return out


def paired(rows: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """LeGR minus the best other method (by mean), paired by seed, per setting/target/metric."""
    out = []
    for setting, target in sorted({(r["setting"], r["target"]) for r in rows}, key=lambda k: (k[0], -k[1])):
        for metric in ("test_top1", "recal_top1"):
            per = {m: {r["seed"]: r[metric] for r in _by(rows, setting=setting, target=target, method=m)
                       if r[metric] is not None} for m in methods}
            legr = per.get("legr", {})
            others = {m: v for m, v in per.items()
                      if (m not in LEGR_VARIANTS or m == "legr_paper") and m not in (LEGR_ONE, WIDE_STREAMS) and v}
            if not legr or not others:
                continue
            best = max(others, key=lambda m: np.mean(list(others[m].values())))
            seeds = sorted(set(legr) & set(others[best]))
            mean, lo, hi = paired_ci([legr[s] - others[best][s] for s in seeds])
            out.append({"setting": setting, "target": target, "metric": metric, "versus": best, "n": len(seeds),
                        "diff_mean": mean, "ci95_low": lo, "ci95_high": hi})
    return out


def variant_pairs(rows: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """legr minus each other LeGR variant in ``methods`` (what one change of the product's
    method is worth at every target), paired by seed, fine-tuned and recalibrated top-1."""
    out = []
    variants = [m for m in methods if m in LEGR_VARIANTS and m not in ("legr", "legr_paper")]
    for setting, target in sorted({(r["setting"], r["target"]) for r in rows}, key=lambda k: (k[0], -k[1])):
        for variant in variants:
            for metric in ("test_top1", "recal_top1"):
                per = [{r["seed"]: r[metric] for r in _by(rows, setting=setting, target=target, method=m)
                        if r[metric] is not None} for m in ("legr", variant)]
                seeds = sorted(set(per[0]) & set(per[1]))
                if not seeds:
                    continue
                mean, lo, hi = paired_ci([per[0][s] - per[1][s] for s in seeds])
                out.append({"setting": setting, "target": target, "metric": metric, "versus": variant,
                            "n": len(seeds), "diff_mean": mean, "ci95_low": lo, "ci95_high": hi})
    return out


def variant_table(vpairs) -> tuple[list[str], list[list[str]]]:
    header = ["setting", "target", "legr minus", "n", "fine-tuned [95% CI]", "after recalibration only"]
    cells: dict[tuple, dict[str, Any]] = {}
    for p in vpairs:
        cells.setdefault((p["setting"], p["target"], p["versus"]), {})[p["metric"]] = p
    rows = []
    for (setting, target, versus), by in cells.items():
        row = [setting, f"{target:.2f}", versus, str(max(p["n"] for p in by.values()))]
        for metric in ("test_top1", "recal_top1"):
            p = by.get(metric)
            row.append(_ci(p["diff_mean"], p["ci95_low"], p["ci95_high"]) if p else "-")
        rows.append(row)
    return header, rows


def ablation(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each ablation variant minus its base (ABLATION_BASE) at the search target, paired by seed."""
    out = []
    for setting in sorted({r["setting"] for r in rows if r["method"] in ABLATIONS}):
        target = min(r["target"] for r in rows if r["setting"] == setting)
        for variant in ABLATIONS:
            base = ABLATION_BASE[variant]
            legr = {r["seed"]: r for r in _by(rows, setting=setting, target=target, method=base)}
            var = {r["seed"]: r for r in _by(rows, setting=setting, target=target, method=variant)}
            seeds = sorted(set(legr) & set(var))
            if not seeds:
                continue
            row = {"setting": setting, "target": target, "variant": variant, "base": base, "n": len(seeds),
                   "change": json.dumps(LEGR_VARIANTS[variant])}
            for metric in ("test_top1", "recal_top1"):
                both = [s for s in seeds if var[s][metric] is not None and legr[s][metric] is not None]
                mean, lo, hi = (paired_ci([var[s][metric] - legr[s][metric] for s in both]) if both
                                else (float("nan"),) * 3)
                row.update({f"{metric}_mean": common.mean_std([var[s][metric] for s in both])[0],
                            f"{metric}_diff": mean, f"{metric}_ci_low": lo, f"{metric}_ci_high": hi,
                            f"{metric}_n": len(both)})
            out.append(row)
    return out


ABLATION_COLUMNS = ("setting", "target", "variant", "base", "change", "n", "test_top1_n", "test_top1_mean",
                    "test_top1_diff", "test_top1_ci_low", "test_top1_ci_high", "recal_top1_n", "recal_top1_mean",
                    "recal_top1_diff", "recal_top1_ci_low", "recal_top1_ci_high")


def _ci(mean: float, lo: float, hi: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]" if not math.isnan(lo) else f"{mean:+.2f} (n=1)"


def table_rows(summary, pairs, methods) -> tuple[list[str], list[list[str]]]:
    header = (["setting", "target"] + [f"{m} (MACs)" for m in methods]
              + ["LeGR - best other, fine-tuned [95% CI]", "... after recalibration only"])
    rows = []
    for setting, target in dict.fromkeys((s["setting"], s["target"]) for s in summary
                                         if s["method"] in methods):
        cells = {s["method"]: s for s in summary if (s["setting"], s["target"]) == (setting, target)}
        pr = {p["metric"]: p for p in pairs if (p["setting"], p["target"]) == (setting, target)}
        row = [setting, f"{target:.2f}"]
        most = max((c["n"] for m, c in cells.items() if m in methods), default=0)
        for m in methods:
            c = cells.get(m)
            tuned = "-" if not c or math.isnan(c["test_top1_mean"]) else \
                f"{c['test_top1_mean']:.2f}±{c['test_top1_std']:.2f}"
            fewer = f" n={c['n']}" if c and c["n"] < most else ""  # fewer seeds than the others
            row.append(f"{tuned} / {c['recal_top1_mean']:.1f} ({c['macs_ratio']:.3f}){fewer}" if c else "-")
        for metric in ("test_top1", "recal_top1"):
            p = pr.get(metric)
            row.append(f"{_ci(p['diff_mean'], p['ci95_low'], p['ci95_high'])} vs {p['versus']} (n={p['n']})"
                       if p else "-")
        rows.append(row)
    return header, rows


def ablation_table(abl) -> tuple[list[str], list[list[str]]]:
    header = ["setting", "target", "variant (one change off)", "base", "n tuned", "fine-tuned top-1",
              "minus base [95% CI]", "n recal", "recal top-1", "minus base [95% CI]"]
    rows = [[a["setting"], f"{a['target']:.2f}", a["variant"], a["base"], a["test_top1_n"],
             f"{a['test_top1_mean']:.2f}",
             _ci(a["test_top1_diff"], a["test_top1_ci_low"], a["test_top1_ci_high"]), a["recal_top1_n"],
             f"{a['recal_top1_mean']:.2f}",
             _ci(a["recal_top1_diff"], a["recal_top1_ci_low"], a["recal_top1_ci_high"])] for a in abl]
    return header, rows


def plot(summary: list[dict[str, Any]], dense: dict[str, float], methods: list[str], path: Path) -> None:
    plt = common.pyplot()
    settings = list(dict.fromkeys(s["setting"] for s in summary))
    fig, axes = plt.subplots(2, len(settings), figsize=(5.5 * len(settings), 8), squeeze=False)
    for col, setting in enumerate(settings):
        for row, (key, label) in enumerate((("test_top1", "fine-tuned"), ("recal_top1", "recalibrated, no fine-tune"))):
            ax = axes[row][col]
            for m in methods:
                pts = sorted((s["macs_ratio"], s[f"{key}_mean"], s[f"{key}_std"]) for s in summary
                             if s["setting"] == setting and s["method"] == m)
                if pts:
                    x, y, e = zip(*pts)
                    ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=m, lw=2.5 if m == "legr" else 1)
            ax.axhline(dense[setting], color="gray", ls=":", label="dense")
            ax.set_xlabel("MACs / dense MACs")
            ax.set_ylabel(f"test top-1 (%), {label}")
            ax.set_title(setting)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    common.save_figure(fig, path)


def main(argv=None) -> int:
    global CACHED_ONLY, FINETUNE, FINETUNE_TARGETS
    args = parse_args(argv)
    CACHED_ONLY, FINETUNE = args.cached_only, not args.no_finetune
    FINETUNE_TARGETS = set(floats(args.finetune_targets)) if args.finetune_targets else None
    meta = common.start(NAME, args.quick, args.verbose, variant=args.variant)
    common.set_threads(args.threads or (1 if args.quick else None))
    settings = (args.settings or ("digits/resnet20" if args.quick else ",".join(FULL))).split(",")
    targets = floats(args.targets) if args.targets else list(QUICK_TARGETS if args.quick else FULL_TARGETS)
    methods = [m for m in args.methods.split(",") if m] + (["legr_multi"] if args.multi_target else [])
    unknown = set(methods) - set(METHODS) - set(LEGR_VARIANTS) - {LEGR_ONE, WIDE_STREAMS}
    if unknown:
        raise SystemExit(f"unknown methods: {sorted(unknown)}")
    ablate = set(a for a in args.ablation.split(",") if a) if not args.quick else set()
    device = workflow.pick_device(args.device)
    out = args.out or common.default_out(NAME, args.quick, args.variant)
    t0 = time.perf_counter()
    rows, dense, budgets, seeds_used, norm_rows, spread = [], {}, {}, {}, {}, {}
    from tqdm.auto import tqdm
    for setting in settings:
        seeds = [int(s) for s in (args.seeds or ("0" if args.quick else FULL_SEEDS.get(setting, "0,1,2"))).split(",")]
        seeds_used[setting] = seeds
        budget = budget_for(setting, args)
        budgets[setting] = dataclasses.asdict(budget)
        bench = prepare(setting, budget, targets, args.work_dir, device)
        dense[setting] = bench.dense_row["test_top1"]
        n_ablation = min(args.ablation_seeds, len(seeds)) if setting in ablate else 0
        n = len(seeds) * len(targets) * len(methods) + n_ablation * len(ABLATION_RUNS)
        if setting in ablate:
            norm_rows[setting] = [r for r in norm_study(bench, seeds[:1]) if r is not None]
            spread[setting] = operator_spread(bench)
        with tqdm(total=n, desc=setting, unit="model", disable=None) as bar:
            rows += run_setting(bench, methods, seeds, n_ablation, bar)
    elapsed = time.perf_counter() - t0
    if not rows:
        log.error("no rows to report%s", " (--cached-only: nothing cached for these settings under "
                  f"{args.work_dir})" if CACHED_ONLY else "")
        return 1
    report(meta, out, rows, methods, dense, budgets, targets, seeds_used, elapsed, norm_rows, spread)
    return 0


def report(meta, out: Path, rows, methods, dense, budgets, targets, seeds, elapsed: float,
           norm_rows: dict[str, list[dict[str, Any]]], spread: dict[str, list[dict[str, Any]]]) -> None:
    summary, pairs, abl = summarize(rows), paired(rows, methods), ablation(rows)
    vpairs = variant_pairs(rows, methods)
    header, trows = table_rows(summary, pairs, methods)
    print("\nTest top-1 (%): fine-tuned mean±std / after recalibration only (achieved MACs/dense); dense: "
          + ", ".join(f"{d} {v:.2f}" for d, v in dense.items()))
    print(common.text_table(trows, header))
    if vpairs:
        print(common.text_table(*reversed(variant_table(vpairs))))
    if abl:
        print(common.text_table(*reversed(ablation_table(abl))))
    print(f"wall time {elapsed / 60:.1f} min")
    settings = {"targets": targets, "seeds": seeds, "methods": methods, "budgets": budgets,
                "dense_test_top1": dense, "wall_s": elapsed, "variants": LEGR_VARIANTS}
    common.write_results(out, meta, rows, COLUMNS, settings, {"table": summary, "paired": pairs, "ablation": abl,
                                                              "variant_pairs": vpairs,
                                                              "normalisation": norm_rows,
                                                              "operator_spread": spread},
                         extra_csvs={"summary.csv": (summary, SUMMARY_COLUMNS),
                                     "paired.csv": (pairs, PAIRED_COLUMNS),
                                     "variants.csv": (vpairs, PAIRED_COLUMNS),
                                     "ablation.csv": (abl, ABLATION_COLUMNS)})
    png = out / f"{NAME}.png"
    plot(summary, dense, [m for m in methods], png)
    # the seeds the rows come from (a --cached-only report may hold fewer than were asked for)
    held = {s: sorted({r["seed"] for r in rows if r["setting"] == s}) for s in seeds}
    parts = [
        f"Test top-1 (%) per method: fine-tuned mean±std over seeds / right after BatchNorm recalibration, "
        f"no fine-tuning (mean), achieved MACs/dense in brackets; n=k after a cell: that method has "
        f"rows for only k of the setting's seeds. Seeds: "
        + "; ".join(f"{s} {v}" for s, v in held.items()) + ". Dense: "
        + ", ".join(f"{d} {v:.2f}" for d, v in dense.items()) + f". Wall time {elapsed / 60:.1f} min.",
        common.md_table(trows, header)]
    if vpairs:
        parts += ["The product's method (`legr`) minus each of its variants listed above, paired by seed "
                  "(positive = the product's method is ahead; each variant switches one thing off, see "
                  "`LEGR_VARIANTS`):", common.md_table(*reversed(variant_table(vpairs)))]
    if abl:
        parts += ["Ablation at the search target: each change of the product's method switched off alone, "
                  "paired difference to its base (negative = the change helps). `abl_no_stream` is "
                  "`legr_filter` (the own-norm score) without the stream seeds and the seeds at every "
                  "target; the earlier changes were measured before those joined it, so each of them is "
                  "switched off from `abl_no_stream` (the coupled score: `legr` minus `legr_filter`, "
                  "above):",
                  common.md_table(*reversed(ablation_table(abl)))]
    for setting, nrows in norm_rows.items():
        print(common.text_table(*reversed(norm_table(nrows))))
        parts += [f"Score normalisation ({setting}): test top-1 of the IDENTITY ranking right after "
                  "BatchNorm recalibration, no search and no fine-tuning, mean over seeds "
                  f"{sorted({r['seed'] for r in nrows})} of the recalibration batches (achieved MACs/dense). "
                  "`zscore/mean` is the product's default:",
                  common.md_table(*reversed(norm_table(nrows)))]
    for setting, srows in spread.items():
        table = [[r["operator"], f"{100 * r['groups_at_floor']:.1f}", f"{100 * r['groups_untouched']:.1f}"]
                 for r in srows]
        head = ["operator", "groups at their floor (%)", "groups untouched (%)"]
        print(common.text_table(table, head))
        parts += [f"Search operator ({setting}): random initial candidates ({srows[0]['candidates']} each) "
                  f"pruned to {srows[0]['target']:g} of the MACs, mean share of channel groups cut to "
                  "their floor or left untouched (all-or-nothing candidates have both high):",
                  common.md_table(table, head)]
    parts += ["Budgets: " + "; ".join(f"{d}: " + ", ".join(f"{k}={v}" for k, v in b.items())
                                      for d, b in budgets.items()),
              f"![ranking quality]({common.rel(png)}) · data: `{common.rel(out)}/`"]
    if common.in_benchmarks(out):
        common.update_results_md(meta, "\n\n".join(parts))
    else:  # a scratch --out: RESULTS.md would link outside the repository
        log.info("--out lies outside benchmarks/: RESULTS.md left as it is")


if __name__ == "__main__":
    raise SystemExit(main())
