"""Latency realization: do fewer MACs become less latency on the device?

For every family member (targets 0.8, 0.6, 0.5, 0.4, 0.3, 0.2) of a network and for
``round_to`` 1, 4, 8 and 16, prune the dense weights with the global L2 ranking
(identity alpha/kappa) or a learned ``--ranking ranking.json``, export each network
with ``legr_edge.export.export_model`` (BatchNorm folded) and time it with the
profile's backend (default ``cpu-ort``: ONNX Runtime on this CPU, batch 1) through
``legr_edge.device.timing.measure``.

All networks (every round_to, every target, the dense ones) are timed in ONE run,
INTERLEAVED: each round visits every network once, in a new seeded random order, and
takes one short measurement; a network's latency ratio is the median over rounds of
(its median / its dense network's median in the same round), so machine drift hits all
alike. Latency does not depend on weight values, so random-init weights are the default
(``--dense DIR`` prunes a trained legr_edge model directory instead).

The ideal is latency ratio == MACs ratio. Reported per network and round_to: mean
|lat_ratio - macs_ratio|, mean lat_ratio / macs_ratio, mean lat_ratio, and which
round_to the profile should default to (lowest mean latency ratio at the same MAC
targets; a larger round_to must beat a smaller one by more than ``--tie`` to be chosen,
since coarser rounding lands further below the MAC target and costs accuracy).

Opset: the profile's (18 for cpu-ort, torch's dynamo exporter, ~5 s per network);
``--quick`` uses 17 (the TorchScript exporter, ~2 s per network). If an export at 18 or
above fails (torch 2.13's dynamo exporter sometimes refuses the batch-1 example, see
benchmarks/README.md; not seen with these inputs), that network is exported at 17 instead and the ``opset`` column
says so; ONNX Runtime CPU latency of a BN-folded conv graph does not depend on it.

Commands (from the repository root):

    # under a minute: ResNet-20 only, 5 rounds, opset 17
    python -m benchmarks.latency_realization --quick
    # full: ResNet-20 and ResNet-56, all six targets, 9 rounds (about 6-8 minutes on 2 cores)
    python -m benchmarks.latency_realization
    # a learned ranking on its trained dense model
    python -m benchmarks.latency_realization --dense runs/resnet20-digits/models/dense \\
        --ranking runs/resnet20-digits/ranking.json

Writes ``--out`` (default benchmarks/results/latency_realization/[quick/]): results.csv
(one row per network), summary.csv (per network and round_to), results.json,
latency_realization.png, and its section of benchmarks/RESULTS.md. ONNX files go
to ``--work-dir`` (git-ignored).
"""
from __future__ import annotations

import argparse
import dataclasses
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
from legr_edge.device.backends import ModelSpec, get_backend  # noqa: E402
from legr_edge.device.profiles import load_profile  # noqa: E402
from legr_edge.device.timing import measure  # noqa: E402
from legr_edge.export import export_model  # noqa: E402
from legr_edge.models import arch  # noqa: E402
from legr_edge.models.registry import create_model  # noqa: E402
from legr_edge.prune.coupling import build_coupling  # noqa: E402
from legr_edge.prune.cost import build_cost_model, count_macs, count_params  # noqa: E402
from legr_edge.prune.ranking import Pruner, base_scores  # noqa: E402
from legr_edge.prune.surgery import prune_model  # noqa: E402

log = logging.getLogger("benchmarks.latency_realization")

NAME = "latency_realization"
TARGETS = (0.8, 0.6, 0.5, 0.4, 0.3, 0.2)
ROUND_TOS = (1, 4, 8, 16)
COLUMNS = ("network", "name", "round_to", "target", "opset", "macs", "macs_ratio", "params", "lat_ms",
           "lat_ratio", "lat_ratio_min", "lat_ratio_max", "lat_over_macs", "abs_gap", "cv_median")
SUMMARY_COLUMNS = ("network", "round_to", "models", "targets_met", "mean_macs_ratio", "mean_lat_ratio",
                   "mean_abs_gap", "mean_lat_over_macs", "recommended")
MET_TOLERANCE = 0.01  # a member meets its target when MACs ratio <= target + this


@dataclasses.dataclass
class Member:
    network: str
    name: str
    round_to: int          # 0 for the dense network
    target: float
    net: nn.Module
    macs: int
    macs_ratio: float
    onnx: Path | None = None
    opset: int | None = None
    medians: list[float] = dataclasses.field(default_factory=list)
    cvs: list[float] = dataclasses.field(default_factory=list)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="under a minute: ResNet-20 only, 5 rounds, opset 17")
    p.add_argument("--out", type=Path, help="result folder (default benchmarks/results/latency_realization/)")
    p.add_argument("--work-dir", type=Path, default=common.BENCH_DIR / "work" / NAME, help="ONNX files (git-ignored)")
    p.add_argument("--models", help="comma-separated (default resnet20,resnet56; quick resnet20)")
    p.add_argument("--dataset", default="digits", help="input shape and eval images (default digits, 1x32x32)")
    p.add_argument("--dense", type=Path, help="a trained legr_edge model directory to prune instead of random init")
    p.add_argument("--ranking", type=Path, help="ranking.json with learned alpha/kappa (default: identity = L2)")
    p.add_argument("--targets", help="comma-separated (default 0.8,0.6,0.5,0.4,0.3,0.2)")
    p.add_argument("--round-to", default=",".join(map(str, ROUND_TOS)), help="comma-separated round_to values")
    p.add_argument("--profile", default="cpu-ort")
    p.add_argument("--threads", type=int, help="override the profile's ONNX Runtime threads (0 = all cores)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the profile's; quick 17)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 9; quick 5)")
    p.add_argument("--min-seconds", type=float, help="timing per network per round (default 0.3; quick 0.15)")
    p.add_argument("--min-iters", type=int, default=30)
    p.add_argument("--warmup-s", type=float, default=0.05, help="warm-up per network per round")
    p.add_argument("--tie", type=float, default=0.02, help="mean latency ratios closer than this count as equal")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


# ----- the family -----------------------------------------------------------------------

def dense_network(name: str | None, dense_dir: Path | None, info) -> tuple[str, nn.Module]:
    if dense_dir is not None:
        return arch.read_arch(dense_dir)["model"], arch.load_model(dense_dir)
    torch.manual_seed(0)
    return name, create_model(name, info.num_classes, info.in_chans).eval()


def load_ranking(path: Path | None, layer_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    if path is None:
        return None
    layers = json.loads(path.read_text())["layers"]
    if [l["name"] for l in layers] != list(layer_names):
        raise SystemExit(f"{path}: its layers do not match the network's scored layers")
    return np.array([l["alpha"] for l in layers]), np.array([l["kappa"] for l in layers])


def family(network: str, dense: nn.Module, info, targets, round_tos, ranking: Path | None) -> list[Member]:
    example = torch.zeros(1, info.in_chans, *info.image_size)
    coupling = build_coupling(dense, example)
    cost = build_cost_model(dense, example, coupling)
    scores = base_scores(dense, coupling)
    alpha, kappa = load_ranking(ranking, scores.layer_names) or scores.identity()
    s = scores.transformed(alpha, kappa)
    dense_macs = count_macs(dense, example)
    members = [Member(network, f"{network}/dense", 0, 1.0, dense, dense_macs, 1.0)]
    for r in round_tos:
        pruner = Pruner(coupling, cost, round_to=r)
        for t in targets:
            mask, _ = pruner.prune_to(s, t)
            net = prune_model(dense, coupling, mask)
            macs = count_macs(net, example)
            members.append(Member(network, f"{network}/r{r}_t{t:g}", r, t, net, macs, macs / dense_macs))
    return members


def export_all(members: list[Member], info, data, work: Path, opset: int) -> None:
    from tqdm.auto import tqdm

    images, _ = data.test.get(np.arange(16))
    meta = {"mean": np.asarray(info.mean, np.float32), "std": np.asarray(info.std, np.float32)}
    for m in tqdm(members, desc="export", unit="model", disable=None):
        model_dir = work / "models" / m.name.replace("/", "_")
        arch.save_model(m.net, model_dir, {"model": m.network, "num_classes": info.num_classes,
                                           "in_chans": info.in_chans,
                                           "input_size": [info.in_chans, *info.image_size]})
        m.onnx = work / "onnx" / f"{m.name.replace('/', '_')}.onnx"
        m.opset = export_with_fallback(model_dir, m.onnx, opset, images, meta)


def export_with_fallback(model_dir: Path, dest: Path, opset: int, images, meta) -> int:
    """export_model at ``opset``; at 18+ a failing dynamo export is retried at 17."""
    try:
        export_model(model_dir, dest, opset, images, meta)
        return opset
    except Exception as e:
        if opset < 18:
            raise
        log.warning("%s: export at opset %d failed (%s: %s); using opset 17", dest.name, opset,
                    type(e).__name__, str(e).splitlines()[0][:200])
        export_model(model_dir, dest, 17, images, meta)
        return 17


# ----- interleaved timing -------------------------------------------------------------------

def time_interleaved(members: list[Member], info, profile, args) -> None:
    from tqdm.auto import tqdm

    backend_cls = get_backend(profile.backend)
    backend_cls.check_available(profile)
    batch = profile.batch_sizes[0]
    backends = []
    for m in members:
        spec = ModelSpec(m.name, m.onnx, io.sha256_file(m.onnx), input_shape=(info.in_chans, *info.image_size))
        b = backend_cls(spec, profile).activate()
        b.prepare(batch)
        backends.append(b)
    rng = np.random.default_rng(0)
    try:
        for _ in tqdm(range(args.rounds), desc="rounds", unit="round", disable=None):
            for i in rng.permutation(len(members)):
                res = measure(backends[i].step, batch_size=batch, warmup_s=args.warmup_s,
                              min_iters=args.min_iters, min_seconds=args.min_seconds, label=members[i].name)
                members[i].medians.append(res.stats.median)
                members[i].cvs.append(res.stats.cv)
    finally:
        for b in backends:
            b.deactivate()


def result_rows(members: list[Member]) -> list[dict[str, Any]]:
    dense = {m.network: m for m in members if m.round_to == 0}
    rows = []
    for m in members:
        ratios = np.asarray(m.medians) / np.asarray(dense[m.network].medians)  # per round, same round
        lat = float(np.median(ratios))
        rows.append({"network": m.network, "name": m.name, "round_to": m.round_to, "target": m.target,
                     "opset": m.opset,
                     "macs": m.macs, "macs_ratio": m.macs_ratio, "params": count_params(m.net),
                     "lat_ms": float(np.median(m.medians)), "lat_ratio": lat,
                     "lat_ratio_min": float(ratios.min()), "lat_ratio_max": float(ratios.max()),
                     "lat_over_macs": lat / m.macs_ratio, "abs_gap": abs(lat - m.macs_ratio),
                     "cv_median": float(np.median(m.cvs))})
    return rows


def summarize(rows: list[dict[str, Any]], tie: float) -> list[dict[str, Any]]:
    out = []
    for network in dict.fromkeys(r["network"] for r in rows):
        per = []
        for r_to in sorted({r["round_to"] for r in rows if r["network"] == network and r["round_to"]}):
            g = [r for r in rows if r["network"] == network and r["round_to"] == r_to]
            per.append({"network": network, "round_to": r_to, "models": len(g),
                        "targets_met": sum(r["macs_ratio"] <= r["target"] + MET_TOLERANCE for r in g),
                        "mean_macs_ratio": float(np.mean([r["macs_ratio"] for r in g])),
                        "mean_lat_ratio": float(np.mean([r["lat_ratio"] for r in g])),
                        "mean_abs_gap": float(np.mean([r["abs_gap"] for r in g])),
                        "mean_lat_over_macs": float(np.mean([r["lat_over_macs"] for r in g])),
                        "recommended": False})
        recommend(per, tie)["recommended"] = True
        out += per
    return out


def recommend(per: list[dict[str, Any]], tie: float) -> dict[str, Any]:
    """Among the round_to values that meet every MAC target (coarse rounding raises the
    per-group floors, e.g. round_to 16 cannot prune a 16-channel group at all), the
    smallest whose mean latency ratio is within ``tie`` of the lowest."""
    feasible = [p for p in per if p["targets_met"] == p["models"]] or per
    best = min(p["mean_lat_ratio"] for p in feasible)
    return min((p for p in feasible if p["mean_lat_ratio"] <= best + tie), key=lambda p: p["round_to"])


# ----- report ----------------------------------------------------------------------------

def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    plt = common.pyplot()
    networks = list(dict.fromkeys(r["network"] for r in rows))
    fig, axes = plt.subplots(1, len(networks), figsize=(5 * len(networks), 4.2), squeeze=False)
    for ax, network in zip(axes[0], networks):
        for r_to in sorted({r["round_to"] for r in rows if r["round_to"]}):
            g = sorted((r for r in rows if r["network"] == network and r["round_to"] == r_to),
                       key=lambda r: r["macs_ratio"])
            err = [[r["lat_ratio"] - r["lat_ratio_min"] for r in g], [r["lat_ratio_max"] - r["lat_ratio"] for r in g]]
            ax.errorbar([r["macs_ratio"] for r in g], [r["lat_ratio"] for r in g], yerr=err, marker="o",
                        capsize=2, label=f"round_to {r_to}")
        ax.plot([0, 1], [0, 1], "k:", label="ideal: latency ratio = MACs ratio")
        ax.set_xlim(0, 1.05)
        ax.set_ylim(0, 1.15)
        ax.set_xlabel("MACs / dense MACs")
        ax.set_ylabel("latency / dense latency (median over rounds)")
        ax.set_title(network)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    common.save_figure(fig, path)


def tables(rows, summary) -> tuple[tuple, tuple]:
    h1 = ["network", "target"] + [f"r{r}: MACs / lat" for r in sorted({r['round_to'] for r in rows if r['round_to']})]
    t1 = []
    for network in dict.fromkeys(r["network"] for r in rows):
        dense = next(r for r in rows if r["network"] == network and r["round_to"] == 0)
        t1.append([network, f"dense {dense['lat_ms']:.3f} ms"] + ["1.000 / 1.000"] * (len(h1) - 2))
        for t in sorted({r["target"] for r in rows if r["round_to"]}, reverse=True):
            cells = {r["round_to"]: r for r in rows if r["network"] == network and r["target"] == t and r["round_to"]}
            t1.append([network, f"{t:.2f}"] + [f"{cells[k]['macs_ratio']:.3f} / {cells[k]['lat_ratio']:.3f}"
                                              for k in sorted(cells)])
    h2 = ["network", "round_to", "targets met", "mean MACs ratio", "mean lat ratio", "mean |lat-MACs|",
          "mean lat/MACs", "pick"]
    t2 = [[s["network"], s["round_to"], f"{s['targets_met']}/{s['models']}", f"{s['mean_macs_ratio']:.3f}", f"{s['mean_lat_ratio']:.3f}",
           f"{s['mean_abs_gap']:.3f}", f"{s['mean_lat_over_macs']:.2f}", "<==" if s["recommended"] else ""]
          for s in summary]
    return (h1, t1), (h2, t2)


def overall_pick(summary: list[dict[str, Any]], tie: float) -> int:
    """round_to with the lowest mean latency ratio over all networks (ties -> smaller)."""
    by_r: dict[int, list[float]] = {}
    for s in summary:
        by_r.setdefault(s["round_to"], []).append(s["mean_lat_ratio"])
    met: dict[int, bool] = {}
    for s in summary:
        met[s["round_to"]] = met.get(s["round_to"], True) and s["targets_met"] == s["models"]
    per = [{"round_to": r, "mean_lat_ratio": float(np.mean(v)), "targets_met": int(met[r]), "models": 1}
           for r, v in by_r.items()]
    return recommend(per, tie)["round_to"]


def main(argv=None) -> int:
    args = parse_args(argv)
    args.rounds = args.rounds or (5 if args.quick else 9)
    args.min_seconds = args.min_seconds or (0.15 if args.quick else 0.3)
    meta = common.start(NAME, args.quick, args.verbose, variant="learned ranking" if args.ranking else "")
    logging.getLogger("legr_edge.device.timing").setLevel(logging.ERROR)  # cv is reported per network instead
    torch.set_num_threads(1)  # pruning and export only; timing is ONNX Runtime's
    from legr_edge.data import load_dataset

    data = load_dataset(args.dataset, val_fraction=0.1, seed=0)
    info = data.info
    profile = load_profile(args.profile)
    if args.threads is not None:
        profile = dataclasses.replace(profile, threads=args.threads)
    targets = [float(t) for t in (args.targets or ",".join(map(str, TARGETS))).split(",")]
    round_tos = [int(r) for r in args.round_to.split(",")]
    names = [None] if args.dense else (args.models or ("resnet20" if args.quick else "resnet20,resnet56")).split(",")
    t0 = time.perf_counter()
    members = []
    for name in names:
        network, dense = dense_network(name, args.dense, info)
        members += family(network, dense, info, targets, round_tos, args.ranking)
    args.opset = args.opset or (17 if args.quick else profile.opset)
    export_all(members, info, data, args.work_dir, args.opset)
    t_export = time.perf_counter() - t0
    time_interleaved(members, info, profile, args)
    rows = result_rows(members)
    report(meta, args, rows, profile, t_export, time.perf_counter() - t0)
    return 0


def report(meta, args, rows, profile, t_export: float, elapsed: float) -> None:
    summary = summarize(rows, args.tie)
    pick = overall_pick(summary, args.tie)
    (h1, t1), (h2, t2) = tables(rows, summary)
    setting = (f"profile {profile.name} ({profile.backend}, threads {profile.threads or 'all'}, batch "
               f"{profile.batch_sizes[0]}), {args.dataset} input, {'ranking ' + str(args.ranking) if args.ranking else 'L2 (identity) ranking'}, "
               f"{'weights of ' + str(args.dense) if args.dense else 'random-init weights'}, "
               f"opset {'/'.join(str(o) for o in sorted({r['opset'] for r in rows}))}; "
               f"{args.rounds} interleaved rounds of >= {args.min_iters} iterations and >= {args.min_seconds} s per network")
    print(f"\nMACs ratio / latency ratio to dense ({setting}):")
    print(common.text_table(t1, h1))
    print("\nDistance from the ideal (latency ratio = MACs ratio):")
    print(common.text_table(t2, h2))
    verdict = (f"Recommended round_to for {profile.name}: {pick} (the profile says {profile.round_to}): among the "
               f"round_to values that meet every MAC target (MACs ratio <= target + {MET_TOLERANCE}), the lowest mean "
               f"latency ratio over all networks; ties within {args.tie} go to the smaller round_to.")
    print(verdict)
    print(f"wall time {elapsed / 60:.1f} min (export {t_export:.0f} s)")
    out = args.out or common.default_out(NAME, args.quick, meta.variant)
    settings = {k: v for k, v in vars(args).items() if k != "out"} | {"profile": profile.to_dict()}
    common.write_results(out, meta, rows, COLUMNS, settings, {"per_round_to": summary, "recommended_round_to": pick},
                         extra_csvs={"summary.csv": (summary, SUMMARY_COLUMNS)})
    png = out / f"{NAME}.png"
    plot(rows, png, f"{profile.name}: latency ratio vs MACs ratio")
    body = "\n\n".join([
        f"MACs ratio / latency ratio to dense; {setting}. Wall time {elapsed / 60:.1f} min.",
        common.md_table(t1, h1), "Distance from the ideal (latency ratio = MACs ratio):",
        common.md_table(t2, h2), verdict,
        f"![latency realization]({common.rel(png)}) · data: `{common.rel(out)}/`"])
    common.update_results_md(meta, body)


if __name__ == "__main__":
    raise SystemExit(main())
