"""Search on Ray workers: candidates per minute, time to a fixed fitness, Ray's overhead.

For each model (ResNet-20, ResNet-56), one short-pretrained dense network and the same
search (the product's fitness, the seeded population, the same evolution seed) run three
ways, all on the same cores:

- ``serial``: this process, no Ray (the default search), torch with ``--threads`` threads;
- ``ray 1x<T>``: ``--workers 1``, one Ray worker with all ``--threads`` threads (the same
  result as serial: this row measures what Ray costs);
- ``ray <T>x1``: ``--workers T``, T workers with one thread each (asynchronous evolution).

Reported per run: candidates per minute (wall time from the first dispatch to the last
result; Ray's start-up, paid once per search, reported apart), the time until the best
fitness so far reaches a FIXED value (the serial run's best after half its candidates;
the N-worker search is another search, so it may reach it sooner, later or not at all),
the candidate's own compute time (measured inside the worker), Ray's overhead per
candidate (dispatch to result in the driver, minus that compute: scheduling, argument and
result transfer, the driver's wait loop), and the driver's own time per candidate (random
draws, search_state.json writes: the serial part of the loop, which caps the speed-up).

From these, the speed-up that N workers would give (one GPU each) is extrapolated:
``min(N / (c + o + d), 1 / d) * (c + d)`` over the serial search, where c is a candidate's
compute time, o Ray's overhead and d the driver's time per candidate (its loop is serial).

The machine's load average is recorded before and after each run: on a shared machine
the 1-vs-2-worker ratio measures the contention as much as Ray. Re-run on a quiet one:

    python -m benchmarks.search_workers --quick     # digits, 16 candidates per run (~8 min on 2 cores)
    python -m benchmarks.search_workers             # shapes, 48 candidates per run (~30 min on 2 cores)

Writes ``--out`` (default benchmarks/results/search_workers/[quick/]): results.csv (one row
per candidate: arrival time, fitness, worker), summary.csv (per model and run),
results.json, and its section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from legr_edge import workflow  # noqa: E402
from legr_edge.config import SearchConfig  # noqa: E402
from legr_edge.evolution import EvolutionSettings, EvolutionState, SerialPool, evolve_async  # noqa: E402
from legr_edge.models.registry import create_model  # noqa: E402
from legr_edge.train import SGDSettings, fit  # noqa: E402

log = logging.getLogger("benchmarks.search_workers")

NAME = "search_workers"
COLUMNS = ("model", "run", "arrival", "index", "t_s", "fitness", "best_so_far", "worker", "compute_s")
SUMMARY_COLUMNS = ("model", "run", "workers", "threads_each", "candidates", "startup_s", "wall_s",
                   "cand_per_min", "speedup_vs_serial", "threshold", "time_to_threshold_s", "best_fitness",
                   "compute_ms", "overhead_ms", "overhead_pct", "driver_ms", "late_driver_ms", "load_before",
                   "load_after")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="digits, 16 candidates per run")
    p.add_argument("--out", type=Path, help="result folder (default benchmarks/results/search_workers/)")
    p.add_argument("--models", default="resnet20,resnet56")
    p.add_argument("--dataset", help="digits (quick) or shapes (full)")
    p.add_argument("--candidates", type=int, help="candidates per search (quick 16, full 48)")
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--sample", type=int, default=4)
    p.add_argument("--threads", type=int, default=2, help="CPU threads in all: serial and 1 worker use all, "
                                                         "T workers one each (default 2)")
    p.add_argument("--tau", type=int, help="SGD steps per candidate (default: the search's default)")
    p.add_argument("--pretrain-epochs", type=int, help="dense pretraining (quick 1, full 2)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def dense_context(model: str, data, args) -> workflow.Context:
    """The search context of a briefly pretrained dense model (fitness needs some accuracy)."""
    cfg = SearchConfig(model=model, dataset=data.info.name, tau=args.tau, targets=(0.3,), export=False,
                       population=args.population, sample=args.sample, candidates=args.candidates, round_to=1)
    torch.manual_seed(0)
    net = create_model(model, data.info.num_classes, data.info.in_chans)
    net, _ = fit(net, data.train, data.val, data.info, args.pretrain_epochs,
                 SGDSettings(lr=0.1, nesterov=True, batch_size=64), torch.device("cpu"), 0, f"pretrain {model}")
    return workflow.make_context(cfg, Path(tempfile.mkdtemp()), torch.device("cpu"), data, net)


class TimedPool:
    """A pool that adds up the time the driver spends waiting for results."""

    def __init__(self, pool):
        self.pool, self.waited = pool, 0.0

    def ready(self, k, done):
        return self.pool.ready(k, done)

    def submit(self, k, alpha, kappa):
        self.pool.submit(k, alpha, kappa)

    def collect(self):
        t0 = time.perf_counter()
        try:
            return self.pool.collect()
        finally:
            self.waited += time.perf_counter() - t0


def search(ctx, workers: int, threads: int, args) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One search; ``workers`` 0 = serial in this process."""
    cfg = ctx.cfg
    settings = EvolutionSettings(cfg.population, cfg.sample, cfg.candidates, 0.1, 0, cfg.init_scale,
                                 cfg.mutate_scale, around_seeds=True)
    state = EvolutionState.fresh(settings, ctx.scores.sigma, list(workflow.seed_transforms(ctx).values()))
    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    if workers:
        from legr_edge.distributed import RayPool
        pool = RayPool(ctx, workers=workers)
    else:
        pool = SerialPool(lambda k, a, kp: workflow.candidate_fitness(ctx, k, a, kp))
    startup = time.perf_counter() - t0
    rows, best = [], -np.inf
    timed = TimedPool(pool)
    start = time.perf_counter()

    def arrived(c) -> None:
        nonlocal best
        best = max(best, c.fitness)
        rows.append({"arrival": len(rows), "index": c.index, "t_s": time.perf_counter() - start,
                     "fitness": c.fitness, "best_so_far": best, "worker": c.worker,
                     "compute_s": c.info["seconds"]})
    try:
        with tempfile.TemporaryDirectory() as tmp:  # the driver writes its state as the search does
            evolve_async(timed, state, Path(tmp) / "search_state.json", arrived)
            wall = time.perf_counter() - start
    finally:
        if workers:
            pool.close()
    overheads = getattr(pool, "overheads", [])
    compute = float(np.median([r["compute_s"] for r in rows]))
    summary = {"workers": workers or 1, "threads_each": threads // max(workers, 1), "candidates": len(rows),
               "startup_s": startup, "wall_s": wall, "cand_per_min": 60.0 * len(rows) / wall,
               "best_fitness": best, "compute_ms": 1000 * compute,
               "overhead_ms": 1000 * float(np.median(overheads)) if overheads else 0.0,
               "driver_ms": 1000 * (wall - timed.waited) / len(rows),
               "load_before": load_before, "load_after": os.getloadavg()[0]}
    summary["overhead_pct"] = 100.0 * summary["overhead_ms"] / summary["compute_ms"]
    return rows, summary


def time_to(rows: list[dict[str, Any]], threshold: float) -> float | None:
    return next((r["t_s"] for r in rows if r["best_so_far"] >= threshold), None)


def run_model(model: str, data, args) -> tuple[list[dict], list[dict]]:
    ctx = dense_context(model, data, args)
    t = args.threads
    runs = [("serial", 0, t), (f"ray 1x{t}", 1, t), (f"ray {t}x1", t, t)]
    rows, summaries = [], []
    for name, workers, threads in runs:
        log.info("%s: %s", model, name)
        r, s = search(ctx, workers, threads, args)
        rows += [{"model": model, "run": name, **x} for x in r]
        summaries.append({"model": model, "run": name, **s})
        log.info("%s %s: %.1f candidates/min (load %.1f -> %.1f)", model, name, s["cand_per_min"],
                 s["load_before"], s["load_after"])
    late = late_driver_ms(len(ctx.scores.layer_names))
    for s in summaries:
        s["late_driver_ms"] = late
    serial_rows = [x for x in rows if x["run"] == "serial"]
    threshold = serial_rows[len(serial_rows) // 2 - 1]["best_so_far"]
    for s in summaries:
        s["threshold"] = threshold
        s["time_to_threshold_s"] = time_to([x for x in rows if x["run"] == s["run"]], threshold)
        s["speedup_vs_serial"] = s["cand_per_min"] / summaries[0]["cand_per_min"]
    return rows, summaries


def extrapolate(s: dict[str, Any], n: int, compute_ms: float | None = None) -> float:
    """Predicted speed-up of n workers over the serial search, from a 1-worker run.

    A worker is busy c + o + d per candidate (compute, Ray's overhead, the driver's turn
    before the next dispatch); the serial search c + d; the driver handles at most 1/d
    candidates per second whatever n."""
    c = compute_ms if compute_ms is not None else s["compute_ms"]
    o, d = s["overhead_ms"], max(s["driver_ms"], 1e-6)
    return min(n / (c + o + d), 1.0 / d) * (c + d)


def late_driver_ms(layers: int, candidates: int = 400, repeats: int = 3) -> float:
    """The driver's time per candidate late in a paper-size search: one search_state.json
    write (it grows with the history) of ``candidates`` candidates of ``layers`` layers."""
    from legr_edge import io
    from legr_edge.evolution import Candidate

    rng = np.random.default_rng(0)
    state = EvolutionState.fresh(EvolutionSettings(64, 16, candidates), np.ones(layers))
    state.history = [Candidate(k, rng.random(layers).tolist(), rng.random(layers).tolist(), -1.0,
                               {"val_top1": 50.0, "val_loss": 1.0, "macs": 1, "seconds": 1.0}, "w0@host:1", k)
                     for k in range(candidates)]
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            t0 = time.perf_counter()
            io.write_json(Path(tmp) / "search_state.json", state.to_json())
            times.append(time.perf_counter() - t0)
    return 1000.0 * common.median(times)


def tables(summary: list[dict]) -> tuple[list[str], list[list[str]]]:
    h = ["model", "run", "cand/min", "x serial", "time to fitness", "startup s", "compute ms", "Ray overhead ms",
         "overhead %", "driver ms", "load before/after"]
    rows = [[s["model"], s["run"], f"{s['cand_per_min']:.1f}", f"{s['speedup_vs_serial']:.2f}",
             "not reached" if s["time_to_threshold_s"] is None else f"{s['time_to_threshold_s']:.1f} s",
             f"{s['startup_s']:.1f}", f"{s['compute_ms']:.0f}", f"{s['overhead_ms']:.1f}",
             f"{s['overhead_pct']:.1f}", f"{s['driver_ms']:.1f}",
             f"{s['load_before']:.1f}/{s['load_after']:.1f}"] for s in summary]
    return h, rows


def extrapolation_text(summary: list[dict], args) -> str:
    lines = []
    for s in (x for x in summary if x["run"] == f"ray 1x{args.threads}"):
        parts = [f"{c / 1000:.2f} s candidates: {extrapolate(s, 8, c):.1f}x" for c in (s["compute_ms"], 100.0, 1000.0, 10000.0)]
        late = {**s, "driver_ms": s["late_driver_ms"]}
        parts_late = [f"{c / 1000:.2f} s: {extrapolate(late, 8, c):.1f}x" for c in (s["compute_ms"], 100.0, 1000.0, 10000.0)]
        lines.append(f"- {s['model']}: overhead {s['overhead_ms']:.1f} ms and driver {s['driver_ms']:.1f} ms per "
                     f"candidate; 8 workers (one GPU each) would give " + ", ".join(parts)
                     + " (the first: this run's candidate time). Late in a 400-candidate search the driver "
                     f"writes a larger state ({s['late_driver_ms']:.0f} ms per candidate): " + ", ".join(parts_late))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.dataset = args.dataset or ("digits" if args.quick else "shapes")
    args.candidates = args.candidates or (16 if args.quick else 48)
    args.pretrain_epochs = args.pretrain_epochs or (1 if args.quick else 2)
    args.tau = SearchConfig.tau if args.tau is None else args.tau
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    meta = common.start(NAME, args.quick, args.verbose)
    from legr_edge.data import load_dataset
    data = load_dataset(args.dataset, val_fraction=0.1, seed=0)
    out = args.out or common.default_out(NAME, args.quick)
    t0 = time.perf_counter()
    rows, summary = [], []
    for model in [m for m in args.models.split(",") if m]:
        r, s = run_model(model, data, args)
        rows += r
        summary += s
    elapsed = time.perf_counter() - t0
    h, r = tables(summary)
    setting = (f"{args.dataset}, {args.candidates} candidates per search (P={args.population}, S={args.sample}), "
               f"tau={args.tau}, the product's fitness, {args.threads} CPU threads in all, on "
               f"{os.cpu_count()} cores")
    print(f"\nSearch on Ray workers ({setting}):")
    print(common.text_table(r, h))
    extra = extrapolation_text(summary, args)
    print(extra)
    print(f"wall time {elapsed / 60:.1f} min")
    common.write_results(out, meta, rows, COLUMNS, {k: v for k, v in vars(args).items() if k != "out"},
                         {"per_run": summary}, extra_csvs={"summary.csv": (summary, SUMMARY_COLUMNS)})
    body = "\n\n".join([
        f"{setting}. Wall time {elapsed / 60:.1f} min. 'x serial' = candidates/min over the serial run's; "
        "'time to fitness' = until the best so far reaches the serial run's best after half its candidates; "
        "'load before/after' = the machine's 1-minute load average (other jobs included).",
        common.md_table(r, h),
        "Extrapolated speed-up over the serial search, min(N / (c + o + d), 1 / d) x (c + d), with c the "
        "candidate's compute, o Ray's overhead and d the driver's time per candidate (measured with 1 worker):",
        extra,
        f"data: `{common.rel(out)}/`"])
    common.update_results_md(meta, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
