"""Search cost: what one LeGR candidate costs, phase by phase, and how the
threshold-to-target step scales with the number of prunable layers.

A candidate of the search (``legr_edge.workflow.candidate_fitness``) is four steps,
timed here one by one with the library's own functions on random-init weights
(timing does not need accuracy):

1. threshold: transformed scores + ``Pruner.prune_to`` (binary search of one global
   threshold; every probe is a vectorised MAC count);
2. surgery: ``prune_model`` (physical removal of the channels);
3. fine-tune: ``train_steps`` for tau SGD steps;
4. evaluation: ``evaluate`` on the validation split.

Peak memory: ``ru_maxrss`` growth of the process over each model's candidates
(models run from small to large, so the growth is that model's), and the
``tracemalloc`` peak of the numpy threshold step alone.

The threshold step is also compared with a NAIVE reference on the same model and
scores: remove the lowest-scored filter (respecting the same per-group floors), re-count
the whole network's MACs, repeat until the target is met (the one-filter-at-a-time loop
of the LeGR authors' code). The naive loop re-counts with the SAME vectorised MAC
counter, so the ratio measures the algorithm only (a per-layer Python recount would be
slower still). It is capped at ``--naive-cap`` removals and extrapolated linearly to
the number of removals the target needs (the table says when).

With CUDA available, everything runs on CUDA too (``--devices``), with synchronisation
around each timed phase.

Commands (from the repository root):

    # about a minute: tau=4, 3 candidates per model, naive loop capped at 1000 removals
    python -m benchmarks.search_cost --quick
    # full: tau=40 (the default search preset), 5 candidates per model, uncapped naive loop
    # (about 6-8 minutes on 2 CPU cores)
    python -m benchmarks.search_cost

Writes ``--out`` (default benchmarks/results/search_cost/[quick/]): results.csv (one
row per candidate), summary.csv (per model), threshold.csv (threshold vs naive),
results.json, search_cost.png, and its section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from legr_edge import workflow  # noqa: E402
from legr_edge.config import SearchConfig  # noqa: E402
from legr_edge.models.registry import create_model  # noqa: E402
from legr_edge.prune.surgery import prune_model  # noqa: E402
from legr_edge.train import SGDSettings, evaluate, train_steps  # noqa: E402

log = logging.getLogger("benchmarks.search_cost")

NAME = "search_cost"
MODELS = ("resnet20", "resnet56", "resnet110", "mobilenetv2_cifar")
THRESHOLD_MODELS = ("resnet20", "resnet32", "resnet56", "resnet110", "mobilenetv2_cifar")
PHASES = ("threshold", "surgery", "finetune", "evaluate")
COLUMNS = ("device", "model", "candidate", "macs_ratio", *(f"{p}_ms" for p in PHASES), "total_ms")
SUMMARY_COLUMNS = ("device", "model", "scored_layers", "candidates", *(f"{p}_ms" for p in PHASES), "total_ms",
                   "threshold_share_pct", "candidates_per_min", "maxrss_growth_mib", "threshold_peak_kib")
THRESHOLD_COLUMNS = ("model", "scored_layers", "groups", "channels", "fast_ms", "fast_probes", "naive_ms",
                     "naive_removals_timed", "removals_needed", "naive_extrapolated", "naive_over_fast",
                     "same_mask")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="about a minute: tau=4, 3 candidates, naive loop capped at 1000")
    p.add_argument("--out", type=Path, help="result folder (default benchmarks/results/search_cost/)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--dataset", default="digits", choices=("digits", "shapes"))
    p.add_argument("--target", type=float, default=0.2, help="search target (the default search uses the smallest, 0.2)")
    p.add_argument("--candidates", type=int, help="candidates timed per model (default 5; quick 3)")
    p.add_argument("--tau", type=int, help="fine-tune steps per candidate (default 40; quick 4)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20, help="threshold-step repeats (median)")
    p.add_argument("--naive-cap", type=int, help="max timed removals of the naive loop (default: none; quick 1000)")
    p.add_argument("--devices", help="comma-separated (default: cpu, plus cuda when available)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; quick: 1)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


# ----- timing helpers ---------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """Run ``fn`` and return (result, milliseconds), synchronised on CUDA."""
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return result, (time.perf_counter() - t0) * 1000.0


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def random_transform(n: int, sigma: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A candidate like the evolution's initial population: alpha=exp(N(0,1)), kappa=N(0,1)*sigma."""
    return np.exp(rng.normal(0.0, 1.0, n)), rng.normal(0.0, 1.0, n) * sigma


# ----- the context of one model ---------------------------------------------------------

def context(model: str, data, device: torch.device, tau: int, batch_size: int, target: float):
    cfg = SearchConfig(model=model, dataset=data.info.name, tau=tau, batch_size=batch_size,
                       targets=(target,), export=False)
    torch.manual_seed(0)
    dense = create_model(model, data.info.num_classes, data.info.in_chans).to(device)
    return workflow.make_context(cfg, Path("unused"), device, data, dense)


def candidate(ctx, k: int, alpha: np.ndarray, kappa: np.ndarray, target: float) -> dict[str, Any]:
    """One candidate, as candidate_fitness runs it, with each phase timed."""
    dev, cfg = ctx.device, ctx.cfg
    (mask, macs), t_thr = timed(lambda: ctx.pruner.prune_to(ctx.scores.transformed(alpha, kappa), target), dev)
    net, t_surg = timed(lambda: prune_model(ctx.dense, ctx.pruner.coupling, mask), dev)
    settings = SGDSettings(lr=cfg.tau_lr, schedule="constant", batch_size=cfg.batch_size)
    _, t_ft = timed(lambda: train_steps(net, ctx.data.train, ctx.info, cfg.tau, settings, dev, k), dev)
    _, t_ev = timed(lambda: evaluate(net, ctx.data.val, ctx.info, dev), dev)
    return {"candidate": k, "macs_ratio": macs / ctx.pruner.dense_macs, "threshold_ms": t_thr,
            "surgery_ms": t_surg, "finetune_ms": t_ft, "evaluate_ms": t_ev,
            "total_ms": t_thr + t_surg + t_ft + t_ev}


def threshold_peak_kib(ctx, alpha, kappa, target: float) -> float:
    """tracemalloc peak of the numpy threshold step (numpy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        ctx.pruner.prune_to(ctx.scores.transformed(alpha, kappa), target)
        return tracemalloc.get_traced_memory()[1] / 1024.0
    finally:
        tracemalloc.stop()


def run_model(model: str, data, device: torch.device, args, bar) -> tuple[list[dict], dict]:
    ctx = context(model, data, device, args.tau, args.batch_size, args.target)
    rng = np.random.default_rng(0)
    n = len(ctx.scores.layer_names)
    rss0, rows = maxrss_mib(), []
    for k in range(args.candidates):
        alpha, kappa = random_transform(n, ctx.scores.sigma, rng)
        rows.append({"device": device.type, "model": model, **candidate(ctx, k, alpha, kappa, args.target)})
        bar.update(1)
    summary = summarize_model(rows, device.type, model, n)
    summary["maxrss_growth_mib"] = maxrss_mib() - rss0
    summary["threshold_peak_kib"] = threshold_peak_kib(ctx, alpha, kappa, args.target)
    return rows, summary


def summarize_model(rows: list[dict], device: str, model: str, layers: int) -> dict[str, Any]:
    s = {"device": device, "model": model, "scored_layers": layers, "candidates": len(rows)}
    for p in (*PHASES, "total"):
        s[f"{p}_ms"] = common.mean_std([r[f"{p}_ms"] for r in rows])[0]
    s["threshold_share_pct"] = 100.0 * s["threshold_ms"] / s["total_ms"]
    s["candidates_per_min"] = 60_000.0 / s["total_ms"]
    return s


# ----- threshold step vs the naive one-removal-at-a-time loop ----------------------------

def naive_prune_to(pruner, scores: np.ndarray, target: float, cap: int | None):
    """Remove the lowest-scored removable channel, re-count MACs, repeat.

    Returns (keep mask, removals done, whether the target was reached)."""
    budget = target * pruner.dense_macs
    group = pruner.coupling.group_of_channel
    counts = np.bincount(group).astype(np.int64)
    floors = pruner.group_counts(np.zeros(len(counts)))  # the same per-group floors as prune_to
    keep = np.ones(len(scores), dtype=bool)
    removals = 0
    for c in np.argsort(scores, kind="stable"):
        if cap is not None and removals >= cap:
            return keep, removals, False
        if counts[group[c]] <= floors[group[c]]:
            continue
        keep[c] = False
        counts[group[c]] -= 1
        removals += 1
        if pruner.cost.macs(keep) <= budget:
            return keep, removals, True
    return keep, removals, True


def count_probes(pruner, scores, target) -> int:
    """How many MAC counts one prune_to makes (a copy of the pruner whose counter counts)."""
    calls = [0]
    cost = pruner.cost
    counting = dataclasses.replace(cost)

    def macs(keep):
        calls[0] += 1
        return cost.macs(keep)
    object.__setattr__(counting, "macs", macs)
    probe = dataclasses.replace(pruner, cost=counting)
    calls[0] = 0  # the copy counted its dense MACs once
    probe.prune_to(scores, target)
    return calls[0]


def threshold_row(model: str, data, args) -> dict[str, Any]:
    ctx = context(model, data, torch.device("cpu"), 0, args.batch_size, args.target)
    pruner, rng = ctx.pruner, np.random.default_rng(1)
    scores = ctx.scores.transformed(*random_transform(len(ctx.scores.layer_names), ctx.scores.sigma, rng))
    fast = []
    for _ in range(args.repeats):
        (mask, _), ms = timed(lambda: pruner.prune_to(scores, args.target), torch.device("cpu"))
        fast.append(ms)
    needed = int((~mask).sum())
    (naive_mask, done, finished), naive_ms = timed(
        lambda: naive_prune_to(pruner, scores, args.target, args.naive_cap), torch.device("cpu"))
    naive_total = naive_ms if finished else naive_ms / max(done, 1) * needed
    fast_ms = common.median(fast)
    return {"model": model, "scored_layers": len(ctx.scores.layer_names), "groups": len(pruner.coupling.groups),
            "channels": pruner.coupling.num_channels, "fast_ms": fast_ms,
            "fast_probes": count_probes(pruner, scores, args.target), "naive_ms": naive_total,
            "naive_removals_timed": done, "removals_needed": needed, "naive_extrapolated": not finished,
            "naive_over_fast": naive_total / fast_ms,
            "same_mask": bool(np.array_equal(naive_mask, mask)) if finished else None}


# ----- report ----------------------------------------------------------------------------

def plot(summary: list[dict], thresholds: list[dict], path: Path) -> None:
    plt = common.pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{s['model']}\n({s['device']})" for s in summary]
    bottom = np.zeros(len(summary))
    for p in PHASES:
        vals = np.array([s[f"{p}_ms"] for s in summary]) / 1000.0
        ax1.bar(labels, vals, bottom=bottom, label=p)
        bottom += vals
    ax1.set_ylabel("seconds per candidate")
    ax1.set_title("one LeGR candidate, by phase")
    ax1.legend(fontsize=8)
    ax1.tick_params(axis="x", labelsize=7)
    t = sorted(thresholds, key=lambda r: r["scored_layers"])
    x = [r["scored_layers"] for r in t]
    ax2.plot(x, [r["fast_ms"] for r in t], "o-", label="prune_to (binary search)")
    ax2.plot(x, [r["naive_ms"] for r in t], "s--", label="naive: re-count after each removal")
    for r in t:
        ax2.annotate(r["model"], (r["scored_layers"], r["naive_ms"]), fontsize=7, xytext=(3, 3),
                     textcoords="offset points")
    ax2.set_yscale("log")
    ax2.set_xlabel("scored (prunable) conv layers")
    ax2.set_ylabel("ms to meet the MAC target")
    ax2.set_title("threshold-to-target step")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    common.save_figure(fig, path)


def tables(summary: list[dict], thresholds: list[dict]) -> tuple[tuple, tuple]:
    h1 = ["device", "model", "layers", "threshold ms", "surgery ms", "fine-tune ms", "eval ms", "total ms",
          "threshold %", "cand/min", "maxrss +MiB", "threshold peak KiB"]
    r1 = [[s["device"], s["model"], s["scored_layers"], f"{s['threshold_ms']:.1f}", f"{s['surgery_ms']:.1f}",
           f"{s['finetune_ms']:.0f}", f"{s['evaluate_ms']:.0f}", f"{s['total_ms']:.0f}",
           f"{s['threshold_share_pct']:.2f}", f"{s['candidates_per_min']:.1f}", f"{s['maxrss_growth_mib']:.0f}",
           f"{s['threshold_peak_kib']:.0f}"] for s in summary]
    h2 = ["model", "layers", "groups", "channels", "prune_to ms", "MAC counts", "naive ms", "naive removals",
          "naive / prune_to", "same mask"]
    r2 = [[t["model"], t["scored_layers"], t["groups"], t["channels"], f"{t['fast_ms']:.2f}", t["fast_probes"],
           f"{t['naive_ms']:.1f}{' (extrapolated)' if t['naive_extrapolated'] else ''}",
           f"{t['naive_removals_timed']}/{t['removals_needed']}", f"{t['naive_over_fast']:.1f}x",
           "-" if t["same_mask"] is None else ("yes" if t["same_mask"] else "no")] for t in thresholds]
    return (h1, r1), (h2, r2)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.candidates = args.candidates or (3 if args.quick else 5)
    args.tau = args.tau if args.tau is not None else (4 if args.quick else 40)
    args.naive_cap = args.naive_cap or (1000 if args.quick else None)
    meta = common.start(NAME, args.quick, args.verbose)
    common.set_threads(args.threads or (1 if args.quick else None))
    from legr_edge.data import load_dataset
    from tqdm.auto import tqdm

    data = load_dataset(args.dataset, val_fraction=0.1, seed=0)
    out = args.out or common.default_out(NAME, args.quick)
    models = [m for m in args.models.split(",") if m]
    devices = (args.devices or ("cpu,cuda" if torch.cuda.is_available() else "cpu")).split(",")
    t0 = time.perf_counter()
    thresholds = [threshold_row(m, data, args) for m in tqdm(THRESHOLD_MODELS, desc="threshold", disable=None)]
    rows, summary = [], []
    bar = tqdm(total=len(devices) * len(models) * args.candidates, desc="candidates", unit="cand", disable=None)
    for dev in devices:
        for model in models:
            r, s = run_model(model, data, torch.device(dev), args, bar)
            rows += r
            summary.append(s)
    bar.close()
    report(meta, out, args, rows, summary, thresholds, time.perf_counter() - t0)
    return 0


def report(meta, out: Path, args, rows, summary, thresholds, elapsed: float) -> None:
    (h1, r1), (h2, r2) = tables(summary, thresholds)
    setting = (f"{args.dataset} data, target {args.target}, tau={args.tau} steps of batch {args.batch_size}, "
               f"{args.candidates} random-transform candidates per model, random-init weights")
    print(f"\nPer candidate ({setting}):")
    print(common.text_table(r1, h1))
    print(f"\nThreshold-to-target step vs the naive loop (median of {args.repeats}; "
          f"naive cap {args.naive_cap or 'none'}):")
    print(common.text_table(r2, h2))
    print(f"wall time {elapsed / 60:.1f} min")
    settings = {k: v for k, v in vars(args).items() if k not in ("out",)}
    common.write_results(out, meta, rows, COLUMNS, settings, {"per_model": summary, "threshold": thresholds},
                         extra_csvs={"summary.csv": (summary, SUMMARY_COLUMNS),
                                     "threshold.csv": (thresholds, THRESHOLD_COLUMNS)})
    png = out / f"{NAME}.png"
    plot(summary, thresholds, png)
    worst = max(s["threshold_share_pct"] for s in summary)
    body = "\n\n".join([
        f"Per candidate: {setting}. Wall time {elapsed / 60:.1f} min.",
        common.md_table(r1, h1),
        f"The threshold step is at most {worst:.2f}% of a candidate's time here.",
        f"Threshold-to-target step (`Pruner.prune_to`, median of {args.repeats}) against the naive loop "
        f"(re-count all MACs with the same vectorised counter after every single removal; naive cap "
        f"{args.naive_cap or 'none'}, 'extrapolated' = time per removal x removals needed):",
        common.md_table(r2, h2),
        f"![search cost]({common.rel(png)}) · data: `{common.rel(out)}/`"])
    common.update_results_md(meta, body)


if __name__ == "__main__":
    raise SystemExit(main())
