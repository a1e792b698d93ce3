"""Which search fitness predicts the accuracy a pruned network reaches after fine-tuning?

LeGR's search keeps the candidate ranking with the best fitness; that is only useful if
the fitness orders candidates the way fine-tuning will. This study takes a fixed set of
candidate networks at ONE MAC target (the searched rankings cached by
``benchmarks.ranking_quality`` for the same setting: the seeds, each search's winner
and random members of its history, plus Torch-Pruning's network), scores each with
every fitness variant, fine-tunes each with the benchmark's budget, and reports the
Spearman rank correlation between each fitness and the fine-tuned test top-1, plus
the fine-tuned accuracy of the candidate each fitness would have chosen.

Fitness variants (all on the same fixed batches, as the search runs them):

- ``loss`` / ``acc``: validation loss (negated) / top-1 after BatchNorm recalibration
  (``--recal-batches``), no training;
- ``tauN_loss`` / ``tauN_acc``: N SGD steps first (common random numbers), then the
  same recalibration and measurement;
- ``multi_acc``: mean recalibrated top-1 at the target and at ``--second-target``.

Outcome noise: a few candidates are fine-tuned with a second seed, and the study prints
the median absolute difference, the floor below which no fitness can resolve candidates.

    python -m benchmarks.fitness_study                      # shapes/resnet20 at 0.2
    python -m benchmarks.fitness_study --target 0.3 --taus 10,40

Writes results.csv/json under ``--out`` (default benchmarks/results/fitness_study/) and
its section of benchmarks/RESULTS.md. Needs the dense model and rankings in the cache of
``benchmarks.ranking_quality`` (run it first for the setting).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks import ranking_quality as rq  # noqa: E402
from legr_edge import io  # noqa: E402
from legr_edge.fitness import FitnessEvaluator, FitnessSettings  # noqa: E402
from legr_edge.prune.surgery import prune_model  # noqa: E402

log = logging.getLogger("benchmarks.fitness_study")
NAME = "fitness_study"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", default="shapes/resnet20", help="data/model of ranking_quality's cache")
    p.add_argument("--target", type=float, default=0.2, help="MAC target of every candidate")
    p.add_argument("--second-target", type=float, default=0.5, help="the other target of multi_acc")
    p.add_argument("--seeds", default="0,1,2,3,4", help="ranking_quality search seeds to draw candidates from")
    p.add_argument("--search-dirs", default="legr-3e45666dd7-44136f-t0.2-seed{seed}",
                   help="ranking_quality search folders to draw candidates from ({seed} is replaced; "
                        "default: its searches with the recalibrated-loss fitness, tau 0)")
    p.add_argument("--per-search", type=int, default=3, help="random history members per search")
    p.add_argument("--taus", default="10,30", help="comma-separated tau steps of the tauN variants")
    p.add_argument("--recal-batches", type=int, default=8)
    p.add_argument("--repeat", type=int, default=4, help="candidates fine-tuned with a second seed")
    p.add_argument("--work-dir", type=Path, default=common.BENCH_DIR / "work")
    p.add_argument("--out", type=Path)
    p.add_argument("--threads", type=int)
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def candidates(bench, seeds: list[int], per_search: int, pattern: str) -> dict[str, np.ndarray]:
    """Scores of the candidate rankings: seeds, winners, random history members."""
    from legr_edge.evolution import load_state

    scores, out = bench.ctx.scores, {}
    rng = np.random.default_rng(0)
    for seed in seeds:
        run = bench.root / pattern.format(seed=seed)
        state = load_state(run / "search_state.json")
        ranking = json.loads((run / "ranking.json").read_text())
        picks = {"winner": ranking["best_index"]}
        if seed == seeds[0]:
            picks.update(identity=0, paper_l2=1, uniform_seed=2)
        others = [c.index for c in state.history[len(state.seeds):] if c.index != ranking["best_index"]]
        for i in rng.choice(others, size=min(per_search, len(others)), replace=False):
            picks[f"h{int(i)}"] = int(i)
        for name, i in picks.items():
            c = state.history[i]
            tag = name if name in ("identity", "paper_l2", "uniform_seed") else f"s{seed}_{name}"
            out[tag] = scores.transformed(np.asarray(c.alpha), np.asarray(c.kappa))
    return out


def fitness_values(bench, net_at, target: float, taus: list[int], recal: int,
                   second: float) -> dict[str, float]:
    ctx, b = bench.ctx, bench.budget
    values = {}
    for tau in [0] + taus:
        ev = FitnessEvaluator(ctx.data, ctx.info, ctx.device,
                              FitnessSettings(recal_batches=recal, batch_size=b.batch_size, tau=tau,
                                              tau_lr=b.tau_lr, val_limit=5000, seed=0))
        _, info = ev(net_at(target), 0)
        prefix = "" if tau == 0 else f"tau{tau}_"
        values[f"{prefix}loss"] = -info["val_loss"]
        values[f"{prefix}acc"] = info["val_top1"]
        if tau == 0 and second is not None:
            _, info2 = ev(net_at(second), 0)
            values["multi_acc"] = (info["val_top1"] + info2["val_top1"]) / 2
    return values


def spearman(x: list[float], y: list[float]) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def main(argv=None) -> int:
    args = parse_args(argv)
    meta = common.start(NAME, False, args.verbose, variant=f"{args.setting} @ {args.target:g}")
    common.set_threads(args.threads)
    budget = rq.FULL[args.setting]
    device = torch.device("cpu")
    targets = [0.7, 0.5, 0.3, 0.2]
    bench = rq.prepare(args.setting, budget, targets, args.work_dir, device)
    seeds = [int(s) for s in args.seeds.split(",")]
    taus = [int(t) for t in args.taus.split(",") if t]
    cands = candidates(bench, seeds, args.per_search, args.search_dirs)
    cache = args.work_dir / "fitness_study" / (f"{args.setting.replace('/', '-')}-t{args.target:g}-"
                                               f"taus{'_'.join(map(str, taus))}-r{args.recal_batches}-"
                                               f"m{args.second_target:g}")
    rows, computed, t0 = [], 0, time.perf_counter()
    names = list(cands) + ["tp_magnitude"]
    tp_nets: dict[float, Any] = {}
    for i, name in enumerate(names):
        def net_at(t, name=name):
            if name == "tp_magnitude":
                return rq.tp_cached(bench, tp_nets, t)
            mask, _ = bench.pruner.prune_to(cands[name], t)
            return prune_model(bench.ctx.dense, bench.pruner.coupling, mask)
        path = cache / f"{name}.json"
        if path.exists():
            row = json.loads(path.read_text())
        else:
            row = {"candidate": name, **fitness_values(bench, net_at, args.target, taus, args.recal_batches,
                                                       args.second_target)}
            ft = rq.finetune_row(bench, name, args.target, 0, net_at(args.target))
            row.update(macs_ratio=ft["macs_ratio"], recal_test=ft["recal_top1"], test_top1=ft["test_top1"])
            if i < args.repeat:
                row["test_top1_seed1"] = rq.finetune_row(bench, name, args.target, 1, net_at(args.target))["test_top1"]
            io.write_json(path, row)
            computed += 1
        rows.append(row)
        log.info("%d/%d %s: fine-tuned %.2f", i + 1, len(names), name, row["test_top1"])
    report(meta, args, rows, time.perf_counter() - t0, computed)
    return 0


def report(meta, args, rows, elapsed: float, computed: int) -> None:
    y = [r["test_top1"] for r in rows]
    fitness_keys = [k for k in rows[0] if k.endswith("loss") or k.endswith("acc")]
    summary = []
    best_y = max(y)
    for k in fitness_keys:
        x = [r[k] for r in rows]
        chosen = rows[int(np.argmax(x))]
        summary.append([k, f"{spearman(x, y):+.2f}", chosen["candidate"], f"{chosen['test_top1']:.2f}",
                        f"{best_y - chosen['test_top1']:.2f}"])
    noise = [abs(r["test_top1"] - r["test_top1_seed1"]) for r in rows if "test_top1_seed1" in r]
    out = args.out or common.default_out(NAME, False)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    common.write_results(out, meta, rows, columns, {**vars(args), "work_dir": str(args.work_dir),
                                                          "out": str(out)},
                         {"fitness": summary, "outcome_noise": noise})
    body = (f"{len(rows)} candidate networks at {args.target:g} of the MACs ({args.setting}), each "
            f"scored by every fitness and fine-tuned with ranking_quality's budget "
            f"({rq.FULL[args.setting].finetune_epochs} epoch, seed 0). Spearman rho between fitness "
            f"and fine-tuned test top-1; 'regret' is the best candidate's top-1 minus the one the "
            f"fitness picks. Outcome noise (same network, fine-tune seed 0 vs 1): median "
            f"|diff| {common.median(noise) if noise else float('nan'):.2f} points over {len(noise)} networks. "
            f"Wall time {elapsed / 60:.1f} min for the {computed} candidates computed in this run "
            f"(the others came from the cache under --work-dir).\n\n"
            + common.md_table(summary, ["fitness", "spearman", "picks", "its top-1", "regret"])
            + "\n\nCandidates (fine-tuned test top-1):\n\n"
            + common.md_table([[r["candidate"], f"{r['macs_ratio']:.3f}", f"{r['recal_test']:.1f}",
                                f"{r['test_top1']:.2f}"] for r in sorted(rows, key=lambda r: -r["test_top1"])],
                              ["candidate", "MACs", "recal test", "fine-tuned test"]))
    common.update_results_md(meta, body)
    print(common.text_table(summary, ["fitness", "spearman", "picks", "its top-1", "regret"]))


if __name__ == "__main__":
    sys.exit(main())
