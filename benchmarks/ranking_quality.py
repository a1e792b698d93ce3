"""Ranking quality: LeGR against what users would do instead, at equal MACs.

From ONE dense checkpoint per data set and with the SAME fine-tune budget, prune to
each MAC target with five methods and compare test top-1 over several seeds:

- ``legr``: the learned ranking (regularized evolution of per-layer alpha/kappa,
  searched at the smallest target with its own evolution seed, used at every target);
- ``l2``: global ranking by squared L2 filter norm (LeGR with identity alpha/kappa);
- ``uniform``: the same kept fraction in every channel group (score = 1 - (within-group
  L2 rank + 0.5) / group size, so the same ``Pruner.prune_to`` meets the MACs);
- ``random``: a random global ranking (seeded per seed);
- ``tp_magnitude``: Torch-Pruning's own ``MagnitudePruner(global_pruning=True,
  MagnitudeImportance(p=2))``, its pruning ratio bisected until legr_edge's
  ``count_macs`` is within 1% of the target.

Per seed ``s``: LeGR's evolution seed is ``s``, every method is fine-tuned with seed
``s`` and ``random`` ranks with seed ``s``. The dense model, the LeGR rankings and
each fine-tuned result are cached under ``--work-dir`` (keyed by their settings),
so a rerun or an interrupted run reuses what is done.

Commands (from the repository root):

    # about a minute: digits subset, 1 seed, targets 0.5 and 0.3, tiny budgets
    python -m benchmarks.ranking_quality --quick
    # the full benchmark: digits + shapes, 3 seeds, targets 0.7/0.5/0.3/0.2
    # (about 30-40 minutes on 2 CPU cores, the first run trains the dense models)
    python -m benchmarks.ranking_quality
    # one data set, more seeds
    python -m benchmarks.ranking_quality --datasets shapes --seeds 0,1,2,3,4

Writes ``--out`` (default benchmarks/results/ranking_quality/[quick/]): results.csv
(one row per data set, method, target and seed), summary.csv (mean/std per method
and target, LeGR minus the best other method), results.json, ranking_quality.png,
and its section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import logging
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
from legr_edge import io  # noqa: E402
from legr_edge.config import SearchConfig  # noqa: E402
from legr_edge.data.base import SubsetSet  # noqa: E402
from legr_edge.prune.coupling import execution_order  # noqa: E402
from legr_edge.prune.cost import count_macs  # noqa: E402
from legr_edge.prune.ranking import within_group_ranks  # noqa: E402
from legr_edge.prune.surgery import prune_model  # noqa: E402
from legr_edge.train import SGDSettings, evaluate, fit  # noqa: E402
from legr_edge import workflow  # noqa: E402

log = logging.getLogger("benchmarks.ranking_quality")

NAME = "ranking_quality"
METHODS = ("legr", "l2", "uniform", "random", "tp_magnitude")
CACHE_VERSION = 2  # bump when a method's code changes: cached fine-tune results are keyed by it
COLUMNS = ("dataset", "method", "target", "seed", "macs", "macs_ratio", "pruned_val_top1",
           "val_top1", "test_top1", "finetune_s")
SUMMARY_COLUMNS = ("dataset", "target", "method", "n", "macs_ratio", "test_top1_mean", "test_top1_std",
                   "pruned_val_top1_mean", "legr_minus_best_other", "best_other")


@dataclasses.dataclass(frozen=True)
class Budget:
    """Everything that changes a result: part of every cache key."""

    model: str = "resnet20"
    train_limit: int = 0          # 0 = the whole training split
    batch_size: int = 64
    pretrain_epochs: int = 30
    finetune_epochs: int = 4
    finetune_lr: float = 0.01
    population: int = 8
    sample: int = 3
    candidates: int = 32
    tau: int = 30
    tau_lr: float = 0.01
    round_to: int = 1
    tp_tolerance: float = 0.01    # TP's MACs within this fraction of the target

    def key(self, *fields: str) -> str:
        d = {f: getattr(self, f) for f in fields}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


# Full-mode budgets per data set, chosen so both data sets fit in ~30-40 min on 2 cores
# (digits: 20 steps/epoch, shapes: 126 steps/epoch at batch 64).
FULL = {"digits": Budget(pretrain_epochs=30, finetune_epochs=5),
        "shapes": Budget(pretrain_epochs=15, finetune_epochs=2)}
QUICK = Budget(train_limit=640, pretrain_epochs=8, finetune_epochs=3, population=3, sample=2,
               candidates=5, tau=5)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="about a minute: digits subset, 1 seed, 2 targets")
    p.add_argument("--out", type=Path, help="result folder (default benchmarks/results/ranking_quality/)")
    p.add_argument("--work-dir", type=Path, default=common.BENCH_DIR / "work",
                   help="cache of dense checkpoints, rankings and fine-tune results (git-ignored)")
    p.add_argument("--datasets", help="comma-separated (default: digits,shapes; quick: digits)")
    p.add_argument("--targets", help="comma-separated MAC targets (default 0.7,0.5,0.3,0.2; quick 0.5,0.3)")
    p.add_argument("--seeds", help="comma-separated seeds (default 0,1,2; quick 0)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--model", default="resnet20")
    p.add_argument("--pretrain-epochs", type=int, help="override the per-data-set default")
    p.add_argument("--finetune-epochs", type=int, help="override the per-data-set default")
    p.add_argument("--candidates", type=int, help="LeGR candidates per search (default 32)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int,
                   help="torch intra-op threads (default: torch's; --quick: 1, robust on a busy machine)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def budget_for(dataset: str, args: argparse.Namespace) -> Budget:
    b = QUICK if args.quick else FULL.get(dataset, Budget())
    over = {"model": args.model}
    for name in ("pretrain_epochs", "finetune_epochs", "candidates"):
        if getattr(args, name) is not None:
            over[name] = getattr(args, name)
    return dataclasses.replace(b, **over)


# ----- one data set -----------------------------------------------------------------

@dataclasses.dataclass
class Bench:
    """The shared state of one data set: data, dense model, pruner, cached masks."""

    dataset: str
    budget: Budget
    root: Path               # work-dir/<model>-<dataset>-<dense key>
    ctx: Any                 # legr_edge.workflow.Context
    dense_row: dict[str, Any]
    targets: list[float]

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


def search_config(dataset: str, budget: Budget, targets: list[float], seed: int, out: Path) -> SearchConfig:
    return SearchConfig(
        model=budget.model, dataset=dataset, out=str(out), seed=seed, batch_size=budget.batch_size,
        pretrain_epochs=budget.pretrain_epochs, targets=tuple(targets), search_target=min(targets),
        population=budget.population, sample=budget.sample, candidates=budget.candidates,
        tau=budget.tau, tau_lr=budget.tau_lr, round_to=budget.round_to,
        finetune_epochs=budget.finetune_epochs, finetune_lr=budget.finetune_lr, export=False)


def prepare(dataset: str, budget: Budget, targets: list[float], work: Path, device) -> Bench:
    """Load the data and the dense model (trained once, cached under ``work``)."""
    root = work / f"{budget.model}-{dataset}-{budget.key('model', 'train_limit', 'batch_size', 'pretrain_epochs')}"
    data = load_data(dataset, budget)
    cfg = search_config(dataset, budget, targets, 0, root)
    t0 = time.perf_counter()
    dense, dense_row = workflow.dense_model(cfg, data, root, device)
    log.info("%s: dense %s ready in %.0fs: test top-1 %.2f, %.2f MMACs (%s)", dataset, budget.model,
             time.perf_counter() - t0, dense_row["test_top1"], dense_row["macs"] / 1e6, root)
    ctx = workflow.make_context(cfg, root, device, data, dense)
    return Bench(dataset, budget, root, ctx, dense_row, targets)


def legr_scores(bench: Bench, seed: int) -> np.ndarray:
    """Search (or reuse) the LeGR ranking of evolution seed ``seed``."""
    b = bench.budget
    key = b.key("population", "sample", "candidates", "tau", "tau_lr", "round_to", "batch_size")
    run = bench.root / f"legr-{key}-t{min(bench.targets):g}-seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    cfg = search_config(bench.dataset, b, bench.targets, seed, run)
    t0 = time.perf_counter()
    alpha, kappa = workflow.search_ranking(dataclasses.replace(bench.ctx, cfg=cfg, run=run))
    log.info("%s: LeGR ranking (seed %d) ready in %.0fs", bench.dataset, seed, time.perf_counter() - t0)
    return bench.ctx.scores.transformed(alpha, kappa)


def l2_scores(bench: Bench) -> np.ndarray:
    return bench.ctx.scores.transformed(*bench.ctx.scores.identity())


def uniform_scores(l2: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Score = 1 - (within-group L2 rank + 0.5) / group size: a threshold t keeps
    round(size * (1 - t)) channels of every group, the same fraction everywhere, and
    within a group the filters with the largest L2 norms."""
    ranks = within_group_ranks(l2, group)
    sizes = np.bincount(group)[group]
    return 1.0 - (ranks + 0.5) / sizes


def random_scores(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(10_000 + seed).random(n)


def masked_net(bench: Bench, scores: np.ndarray, target: float) -> nn.Module:
    mask, _ = bench.pruner.prune_to(scores, target)
    return prune_model(bench.ctx.dense, bench.pruner.coupling, mask)


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
    """Bisect TP's global pruning ratio until count_macs is within tolerance of the target."""
    dense, example = bench.ctx.dense, workflow.example_input(bench.ctx.info, bench.ctx.device)
    classifier = execution_order(dense, example, (nn.Conv2d, nn.Linear))[-1]
    ignored, dense_macs = [dense.get_submodule(classifier)], bench.pruner.dense_macs
    max_ratio = 1.0 - bench.ctx.cfg.min_fraction  # the same per-layer floor as legr_edge's Pruner
    lo, hi, best = 0.0, max_ratio, None
    for _ in range(24):
        ratio = (lo + hi) / 2
        net = tp_prune(dense, example, ratio, ignored, max_ratio)
        got = count_macs(net, example) / dense_macs
        if best is None or abs(got - target) < abs(best[1] - target):
            best = (net, got, ratio)
        if abs(got - target) <= bench.budget.tp_tolerance * target:
            break
        lo, hi = (ratio, hi) if got > target else (lo, ratio)
    log.info("%s: TP magnitude at target %.2f: ratio %.4f gives MACs %.4f", bench.dataset, target,
             best[2], best[1])
    return best[0]


def tp_cached(bench: Bench, nets: dict[float, nn.Module], target: float) -> nn.Module:
    """TP's pruning does not depend on the seed: bisect once per target, copy per seed."""
    if target not in nets:
        nets[target] = tp_at_target(bench, target)
    return copy.deepcopy(nets[target])


# ----- fine-tune and evaluate ---------------------------------------------------------

def finetune_row(bench: Bench, method: str, target: float, seed: int, net: nn.Module) -> dict[str, Any]:
    ctx, b = bench.ctx, bench.budget
    example = workflow.example_input(ctx.info, ctx.device)
    macs = count_macs(net, example)
    pruned_val, _ = evaluate(net, ctx.data.val, ctx.info, ctx.device)
    settings = SGDSettings(lr=b.finetune_lr, nesterov=True, schedule="step", batch_size=b.batch_size)
    t0 = time.perf_counter()
    net, val = fit(net, ctx.data.train, ctx.data.val, ctx.info, b.finetune_epochs, settings,
                   ctx.device, seed, f"{method}@{target:g} s{seed}")
    test, _ = evaluate(net, ctx.data.test, ctx.info, ctx.device)
    return {"dataset": bench.dataset, "method": method, "target": target, "seed": seed, "macs": macs,
            "macs_ratio": macs / bench.pruner.dense_macs, "pruned_val_top1": pruned_val,
            "val_top1": val, "test_top1": test, "finetune_s": time.perf_counter() - t0}


def cached_row(bench: Bench, method: str, target: float, seed: int, make_net) -> dict[str, Any]:
    key = bench.budget.key(*[f.name for f in dataclasses.fields(Budget)])
    path = bench.root / f"finetune-v{CACHE_VERSION}-{key}" / f"{method}-t{target:g}-seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    row = finetune_row(bench, method, target, seed, make_net())
    io.write_json(path, row)
    return row


def run_dataset(bench: Bench, methods: list[str], seeds: list[int], bar) -> list[dict[str, Any]]:
    l2 = l2_scores(bench)
    group = bench.pruner.coupling.group_of_channel
    fixed = {"l2": l2, "uniform": uniform_scores(l2, group)}
    tp_nets: dict[float, nn.Module] = {}
    rows = []
    for seed in seeds:
        scores = dict(fixed, random=random_scores(len(l2), seed))
        if "legr" in methods:
            scores["legr"] = legr_scores(bench, seed)
        for target in bench.targets:
            for method in methods:
                if method == "tp_magnitude":
                    make = lambda t=target: tp_cached(bench, tp_nets, t)
                else:
                    make = lambda m=method, t=target: masked_net(bench, scores[m], t)
                rows.append(cached_row(bench, method, target, seed, make))
                bar.update(1)
    return rows


# ----- summary, table, plot -------------------------------------------------------------

def summarize(rows: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    out = []
    keys = sorted({(r["dataset"], r["target"]) for r in rows}, key=lambda k: (k[0], -k[1]))
    for dataset, target in keys:
        group = {m: [r for r in rows if (r["dataset"], r["target"], r["method"]) == (dataset, target, m)]
                 for m in methods}
        stats = {m: common.mean_std([r["test_top1"] for r in g]) for m, g in group.items() if g}
        others = {m: s for m, s in stats.items() if m != "legr"}
        best_other = max(others, key=lambda m: others[m][0]) if others else None
        diff = (stats["legr"][0] - others[best_other][0]) if "legr" in stats and best_other else None
        for m, (mean, std) in stats.items():
            g = group[m]
            out.append({"dataset": dataset, "target": target, "method": m, "n": len(g),
                        "macs_ratio": common.mean_std([r["macs_ratio"] for r in g])[0],
                        "test_top1_mean": mean, "test_top1_std": std,
                        "pruned_val_top1_mean": common.mean_std([r["pruned_val_top1"] for r in g])[0],
                        "legr_minus_best_other": diff, "best_other": best_other})
    return out


def table_rows(summary: list[dict[str, Any]], methods: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["data", "target"] + [f"{m} top1 (MACs)" for m in methods] + ["LeGR - best other", "best other"]
    rows = []
    for dataset, target in dict.fromkeys((s["dataset"], s["target"]) for s in summary):
        cells = {s["method"]: s for s in summary if (s["dataset"], s["target"]) == (dataset, target)}
        any_row = next(iter(cells.values()))
        diff = any_row["legr_minus_best_other"]
        rows.append([dataset, f"{target:.2f}"]
                    + [f"{cells[m]['test_top1_mean']:.2f}±{cells[m]['test_top1_std']:.2f} ({cells[m]['macs_ratio']:.3f})"
                       if m in cells else "-" for m in methods]
                    + [f"{diff:+.2f}" if diff is not None else "-", any_row["best_other"] or "-"])
    return header, rows


def plot(summary: list[dict[str, Any]], dense: dict[str, float], methods: list[str], path: Path, title: str) -> None:
    plt = common.pyplot()
    datasets = list(dict.fromkeys(s["dataset"] for s in summary))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for m in methods:
            pts = sorted((s["macs_ratio"], s["test_top1_mean"], s["test_top1_std"]) for s in summary
                         if s["dataset"] == dataset and s["method"] == m)
            if pts:
                x, y, e = zip(*pts)
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=m, lw=2 if m == "legr" else 1)
        ax.axhline(dense[dataset], color="gray", ls=":", label="dense")
        ax.set_xlabel("MACs / dense MACs")
        ax.set_ylabel("test top-1 (%), mean ± std over seeds")
        ax.set_title(f"{dataset}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    common.save_figure(fig, path)


def honest_notes(summary: list[dict[str, Any]]) -> list[str]:
    """One line per (data set, target) where LeGR does not beat the best other method
    by more than the larger of the two standard deviations."""
    notes = []
    for s in summary:
        if s["method"] != "legr" or s["legr_minus_best_other"] is None:
            continue
        other = next(o for o in summary if (o["dataset"], o["target"], o["method"])
                     == (s["dataset"], s["target"], s["best_other"]))
        noise = max(s["test_top1_std"], other["test_top1_std"])
        d = s["legr_minus_best_other"]
        if d <= 0:
            notes.append(f"{s['dataset']} @ {s['target']:.2f}: LeGR LOSES to {s['best_other']} by {-d:.2f} points")
        elif d <= noise:
            notes.append(f"{s['dataset']} @ {s['target']:.2f}: LeGR ahead of {s['best_other']} by {d:.2f}, "
                         f"within the seed spread ({noise:.2f}): no clear win")
    return notes


def main(argv=None) -> int:
    args = parse_args(argv)
    meta = common.start(NAME, args.quick, args.verbose)
    common.set_threads(args.threads or (1 if args.quick else None))
    datasets = (args.datasets or ("digits" if args.quick else "digits,shapes")).split(",")
    targets = floats(args.targets or ("0.5,0.3" if args.quick else "0.7,0.5,0.3,0.2"))
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods: {sorted(unknown)}")
    device = workflow.pick_device(args.device)
    out = args.out or common.default_out(NAME, args.quick)
    t0 = time.perf_counter()
    rows, dense, budgets = [], {}, {}
    from tqdm.auto import tqdm
    bar = tqdm(total=len(datasets) * len(seeds) * len(targets) * len(methods), desc="ranking_quality",
               unit="model", disable=None)
    for dataset in datasets:
        budget = budget_for(dataset, args)
        budgets[dataset] = dataclasses.asdict(budget)
        bench = prepare(dataset, budget, targets, args.work_dir, device)
        dense[dataset] = bench.dense_row["test_top1"]
        rows += run_dataset(bench, methods, seeds, bar)
    bar.close()
    elapsed = time.perf_counter() - t0
    report(meta, out, rows, methods, dense, budgets, targets, seeds, elapsed)
    return 0


def report(meta, out: Path, rows, methods, dense, budgets, targets, seeds, elapsed: float) -> None:
    summary = summarize(rows, methods)
    header, trows = table_rows(summary, methods)
    notes = honest_notes(summary)
    print("\nTest top-1 (%), mean±std over seeds (achieved MACs/dense); dense: "
          + ", ".join(f"{d} {v:.2f}" for d, v in dense.items()))
    print(common.text_table(trows, header))
    print("\n".join(notes) if notes else "LeGR beats every other method at every target by more than the seed spread.")
    print(f"wall time {elapsed / 60:.1f} min")
    settings = {"targets": targets, "seeds": seeds, "methods": methods, "budgets": budgets,
                "dense_test_top1": dense, "wall_s": elapsed}
    common.write_results(out, meta, rows, COLUMNS, settings, {"table": summary, "notes": notes},
                         extra_csvs={"summary.csv": (summary, SUMMARY_COLUMNS)})
    png = out / f"{NAME}.png"
    plot(summary, dense, methods, png, f"{budgets[next(iter(budgets))]['model']}: test top-1 at equal MACs")
    body = "\n\n".join([
        f"Test top-1 (%), mean±std over seeds {seeds}, achieved MACs/dense in brackets; "
        f"dense: {', '.join(f'{d} {v:.2f}' for d, v in dense.items())}. Wall time {elapsed / 60:.1f} min.",
        common.md_table(trows, header),
        "Where LeGR does not clearly win:\n\n" + ("\n".join(f"- {n}" for n in notes) if notes else "- nowhere"),
        "Budgets: " + "; ".join(f"{d}: " + ", ".join(f"{k}={v}" for k, v in b.items()) for d, b in budgets.items()),
        f"![ranking quality]({common.rel(png)}) · data: `{common.rel(out)}/`"])
    common.update_results_md(meta, body)


if __name__ == "__main__":
    raise SystemExit(main())
