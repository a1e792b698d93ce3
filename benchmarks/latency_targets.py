"""Latency targets: does a latency-targeted family hit its budgets, and beat a MAC-targeted one?

For ResNet-20 and ResNet-56 (registered models) on the embedded digits data (1x32x32):

1. a dense model (trained --train-epochs on digits, cached under --work-dir) is
   exported to ONNX (BatchNorm folded) and its per-layer latency table is built with
   ``legr_edge.latency_table.build_table`` (the command's code path) for each ONNX
   Runtime thread setting (--threads-list, default 1 and 0 = all cores): build time and
   held-out prediction error are recorded;
2. from the same dense weights and the same ranking (LeGR's L2 base scores, identity
   alpha/kappa, so that both families share it exactly), two families are cut at the same
   fractions: MAC targets (the Pruner's MAC cost) and latency targets (the table's
   predicted latency as the cost, plus staircase widening; channels given back counted);
3. every member is built as ONNX from the dense graph (torch-free slicing: latency does not
   depend on weight values) and timed with the profile's backend, all members of a
   network INTERLEAVED over --rounds rounds in a seeded random order (medians; ratios to
   the dense network are per round), reporting measured vs target latency, measured /
   predicted, and the load average during timing;
4. accuracy: each member is pruned in torch, its BatchNorm statistics re-estimated on
   training images, then fine-tuned --finetune-epochs (0 = BN-recalibrated only), and
   evaluated on the digits test split; accuracy of both families is interpolated at two
   equal measured latencies.

Commands (from the repository root):

    # under 2 minutes: ResNet-20, random-init dense (no accuracy), coarse table, 1 thread
    python -m benchmarks.latency_targets --quick
    # full: ResNet-20 and ResNet-56, 1 and all threads, trained dense, fine-tuned members
    python -m benchmarks.latency_targets

Writes --out (default benchmarks/results/latency_targets/[quick/]): results.csv (one row
per member and thread setting), tables.csv, results.json, latency_targets.png and its
section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from legr_edge import io  # noqa: E402
from legr_edge.device.backends import ModelSpec, get_backend  # noqa: E402
from legr_edge.device.profiles import load_profile  # noqa: E402
from legr_edge.device.timing import measure  # noqa: E402
from legr_edge.latency import graph as lg  # noqa: E402
from legr_edge.latency.table import LatencyTable  # noqa: E402
from legr_edge.latency_table import Settings, build_table  # noqa: E402
from legr_edge.models import arch  # noqa: E402
from legr_edge.models.registry import create_model  # noqa: E402
from legr_edge.prune.coupling import build_coupling  # noqa: E402
from legr_edge.prune.cost import build_cost_model  # noqa: E402
from legr_edge.prune.latency_cost import build_latency_cost, staircase_widen  # noqa: E402
from legr_edge.prune.ranking import Pruner, base_scores  # noqa: E402
from legr_edge.prune.surgery import prune_model  # noqa: E402
from legr_edge.train import SGDSettings, Normalizer, batches, evaluate, fit  # noqa: E402

log = logging.getLogger("benchmarks.latency_targets")

NAME = "latency_targets"
TARGETS = (0.8, 0.6, 0.5, 0.4, 0.3)
COLUMNS = ("network", "threads", "family", "name", "target", "macs_ratio", "target_ms", "predicted_ms",
           "measured_ms", "measured_ratio", "measured_over_target", "measured_over_predicted",
           "staircase_channels", "channels", "top1_bnrecal", "top1", "cv_median", "load_avg")
TABLE_COLUMNS = ("network", "threads", "build_s", "held_out_median_pct", "held_out_max_pct", "fit_median_pct",
                 "calibration", "scale", "overhead_ms", "dense_predicted_ms", "dense_measured_ms",
                 "graphs", "noise_ms", "load_avg")


@dataclasses.dataclass
class Member:
    network: str
    family: str            # "dense", "macs" or "latency"
    name: str
    target: float
    mask: np.ndarray
    macs_ratio: float
    predicted_ms: float = float("nan")
    staircase: int = 0
    top1_bnrecal: float | None = None
    top1: float | None = None
    medians: list[float] = dataclasses.field(default_factory=list)
    cvs: list[float] = dataclasses.field(default_factory=list)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="< 2 min: ResNet-20, random init, 3 targets, coarse table, 1 thread")
    p.add_argument("--out", type=Path, help="result folder (default benchmarks/results/latency_targets/)")
    p.add_argument("--work-dir", type=Path, default=common.BENCH_DIR / "work" / NAME,
                   help="dense checkpoints, ONNX and tables (git-ignored)")
    p.add_argument("--models", help="comma-separated (default resnet20,resnet56; quick resnet20)")
    p.add_argument("--targets", help="comma-separated fractions (default 0.8,0.6,0.5,0.4,0.3)")
    p.add_argument("--threads-list", help="ONNX Runtime intra-op threads, comma-separated (default 1,0; quick 1)")
    p.add_argument("--profile", default="cpu-ort")
    p.add_argument("--train-epochs", help="dense training epochs on digits per model, e.g. resnet20=12,resnet56=12 "
                                          "(default those; quick 0 = random init, no accuracy)")
    p.add_argument("--finetune-epochs", type=int, help="fine-tune epochs per member (default 1; quick 0)")
    p.add_argument("--rounds", type=int, help="interleaved timing rounds of the members (default 9; quick 3)")
    p.add_argument("--min-seconds", type=float, help="timing per member per round (default 0.3; quick 0.1)")
    p.add_argument("--table-rounds", type=int, help="latency table rounds (default 3; quick 1)")
    p.add_argument("--table-layer-seconds", type=float, help="table timing per graph per round (default 0.02; quick 0.004)")
    p.add_argument("--table-max-widths", type=int, help="table widths per axis (default 8: multiples of 8 on 64 channels; quick 4)")
    p.add_argument("--table-configs", type=int, help="pruned networks for calibration (default 8; quick 4)")
    p.add_argument("--equal-latencies", default="0.5,0.7",
                   help="measured-latency fractions of dense at which accuracies are compared")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    q = args.quick
    args.models = (args.models or ("resnet20" if q else "resnet20,resnet56")).split(",")
    args.targets = tuple(float(t) for t in (args.targets or ("0.8,0.5,0.3" if q else ",".join(map(str, TARGETS)))).split(","))
    args.threads_list = [int(t) for t in (args.threads_list or ("1" if q else "1,0")).split(",")]
    epochs = args.train_epochs or ("resnet20=0,resnet56=0" if q else "resnet20=12,resnet56=12")
    args.train_epochs = {k: int(v) for k, v in (kv.split("=") for kv in epochs.split(","))}
    defaults = dict(finetune_epochs=(0, 1), rounds=(3, 9), min_seconds=(0.1, 0.3), table_rounds=(1, 3),
                    table_layer_seconds=(0.004, 0.02), table_max_widths=(4, 8), table_configs=(4, 8))
    for k, (quick_v, full_v) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, quick_v if q else full_v)
    args.equal_latencies = tuple(float(x) for x in args.equal_latencies.split(","))
    return args


# ----- dense model and data --------------------------------------------------------------------
def trained_dense(network: str, epochs: int, data, work: Path) -> torch.nn.Module:
    """The dense network trained ``epochs`` on digits (cached in ``work``); random init for 0."""
    torch.manual_seed(0)
    info = data.info
    model = create_model(network, info.num_classes, info.in_chans)
    if epochs <= 0:
        return model.eval()
    # deeper nets need more, smaller steps on the 1.3k digits training images
    lr, batch = (0.1, 64) if network == "resnet20" else (0.05, 32)
    cache = work / network / f"dense_e{epochs}_lr{lr:g}_b{batch}"
    if (cache / "metrics.json").is_file():
        return arch.load_model(cache).eval()
    settings = SGDSettings(lr=lr, nesterov=True, batch_size=batch)
    model, val = fit(model, data.train, data.val, info, epochs, settings, torch.device("cpu"), 0,
                     f"pretrain {network}")
    arch.save_model(model, cache, {"model": network, "num_classes": info.num_classes,
                                   "in_chans": info.in_chans, "input_size": [info.in_chans, *info.image_size]})
    io.write_json(cache / "metrics.json", {"val_top1": val, "epochs": epochs})
    return model.eval()


def export_dense(network: str, model: torch.nn.Module, info, data, work: Path) -> Path:
    """A run-like folder with onnx/dense.onnx + manifest + config.json for build_table."""
    from legr_edge.export import export_model

    run = work / network / "run"
    if run.exists():
        shutil.rmtree(run)
    model_dir = run / "models" / "dense"
    arch.save_model(model, model_dir, {"model": network, "num_classes": info.num_classes,
                                       "in_chans": info.in_chans, "input_size": [info.in_chans, *info.image_size]})
    images, _ = data.test.get(np.arange(16))
    meta = {"mean": np.asarray(info.mean, np.float32), "std": np.asarray(info.std, np.float32)}
    dest = run / "onnx" / "dense.onnx"
    export_model(model_dir, dest, 17, images, meta)
    io.write_json(run / "onnx" / "manifest.json",
                  {"models": [{"name": "dense", "file": "dense.onnx", "sha256": io.sha256_file(dest)}]})
    io.write_json(run / "config.json", {"model": network, "dataset": "digits"})
    return run


# ----- the two families --------------------------------------------------------------------------
def families(network: str, dense, info, table: LatencyTable, targets, round_to: int) -> tuple[list[Member], Any]:
    example = torch.zeros(1, info.in_chans, *info.image_size)
    coupling = build_coupling(dense, example)
    macs_cost = build_cost_model(dense, example, coupling)
    lat_cost = build_latency_cost(macs_cost, table)
    scores = base_scores(dense, coupling)
    s = scores.transformed(*scores.identity())
    n = coupling.num_channels
    dense_macs = macs_cost.dense_macs(n)
    full = np.ones(n, dtype=bool)
    members = [Member(network, "dense", "dense", 1.0, full, 1.0, lat_cost.latency(full))]
    by_macs, by_lat = Pruner(coupling, macs_cost, round_to), Pruner(coupling, lat_cost, round_to)
    for t in targets:
        mask, _ = by_macs.prune_to(s, t)
        members.append(Member(network, "macs", f"legr_{t:.2f}", t, mask, macs_cost.macs(mask) / dense_macs,
                              lat_cost.latency(mask)))
        mask, _ = by_lat.prune_to(s, t)
        mask, given = staircase_widen(by_lat, s, mask)
        members.append(Member(network, "latency", f"lat_{t:.2f}", t, mask, macs_cost.macs(mask) / dense_macs,
                              lat_cost.latency(mask), staircase=given))
    return members, (coupling, lat_cost)


def member_onnx(dense_graph: lg.DenseGraph, lat_cost, m: Member, folder: Path) -> Path:
    """The member as ONNX, sliced from the dense graph: per layer output width -> ONNX group width."""
    out, _ = lat_cost.counts(m.mask)
    widths = {}
    names = list(lat_cost.names)
    for layer in dense_graph.layers:
        if not dense_graph.fixed[layer.out_group]:
            widths[layer.out_group] = int(round(out[names.index(layer.name)]))
    path = folder / f"{m.family}_{m.name}.onnx"
    io.write_bytes(path, lg.pruned(dense_graph, widths).SerializeToString())
    return path


def accuracy(members: list[Member], dense, coupling, data, epochs: int, cache: dict) -> None:
    """BN-recalibrated (and optionally fine-tuned) test top-1 of every member; ``cache`` keyed by
    the keep-mask, so a member shared by both thread settings (the MAC family) is trained once."""
    from tqdm.auto import tqdm

    info, device = data.info, torch.device("cpu")
    for m in tqdm(members, desc="accuracy", unit="model", disable=None):
        key = (m.network, m.mask.tobytes())
        if key in cache:
            m.top1_bnrecal, m.top1 = cache[key]
            continue
        net = dense if m.family == "dense" else prune_model(dense, coupling, m.mask)
        if m.family != "dense":
            recalibrate_bn(net, data.train, info)
        m.top1_bnrecal = evaluate(net, data.test, info, device)[0]
        if epochs > 0 and m.family != "dense":
            torch.manual_seed(1)
            settings = SGDSettings(lr=0.01, nesterov=True, schedule="step", batch_size=64)
            net, _ = fit(net, data.train, data.val, info, epochs, settings, device, 1, f"finetune {m.name}")
        m.top1 = evaluate(net, data.test, info, device)[0]
        cache[key] = (m.top1_bnrecal, m.top1)


@torch.no_grad()
def recalibrate_bn(net: torch.nn.Module, train, info, batches_n: int = 8) -> None:
    """Re-estimate BatchNorm running statistics of a pruned network on training images."""
    norm = Normalizer.from_info(info, torch.device("cpu"))
    for mod in net.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None  # cumulative average over the batches below
    net.train()
    gen = torch.Generator().manual_seed(0)
    for i, (images, _) in enumerate(batches(train, 128, shuffle=True, gen=gen)):
        if i >= batches_n:
            break
        net(norm(images))
    net.eval()


# ----- timing ------------------------------------------------------------------------------------
def time_members(members: list[Member], paths: list[Path], input_shape, profile, args) -> float:
    """Interleaved rounds, seeded random order; returns the mean 1-minute load average."""
    from tqdm.auto import tqdm

    backend_cls = get_backend(profile.backend)
    backends = []
    for m, path in zip(members, paths):
        spec = ModelSpec(m.name, path, io.sha256_file(path), input_shape=tuple(input_shape))
        b = backend_cls(spec, profile).activate()
        b.prepare(profile.batch_sizes[0])
        backends.append(b)
    rng = np.random.default_rng(0)
    loads = []
    try:
        for _ in tqdm(range(args.rounds), desc="rounds", unit="round", disable=None):
            loads.append(os.getloadavg()[0])
            for i in rng.permutation(len(members)):
                res = measure(backends[i].step, batch_size=profile.batch_sizes[0], warmup_s=0.05,
                              min_iters=20, min_seconds=args.min_seconds, label=members[i].name)
                members[i].medians.append(res.stats.median)
                members[i].cvs.append(res.stats.cv)
    finally:
        for b in backends:
            b.deactivate()
    return float(np.mean(loads))


def rows_for(members: list[Member], threads: int, load: float, dense_pred: float) -> list[dict[str, Any]]:
    dense = members[0]
    rows = []
    for m in members:
        ratio = float(np.median(np.asarray(m.medians) / np.asarray(dense.medians)))
        measured = float(np.median(m.medians))
        target_ms = m.target * dense_pred if m.family == "latency" else None
        rows.append({"network": m.network, "threads": threads, "family": m.family, "name": m.name,
                     "target": m.target, "macs_ratio": m.macs_ratio, "target_ms": target_ms,
                     "predicted_ms": m.predicted_ms, "measured_ms": measured, "measured_ratio": ratio,
                     # the target as a fraction of dense, against the measured fraction of dense
                     "measured_over_target": ratio / m.target if m.family != "dense" else None,
                     "measured_over_predicted": measured / m.predicted_ms,
                     "staircase_channels": m.staircase if m.family == "latency" else None,
                     "channels": int(m.mask.sum()), "top1_bnrecal": m.top1_bnrecal, "top1": m.top1,
                     "cv_median": float(np.median(m.cvs)), "load_avg": load})
    return rows


def equal_latency(rows: list[dict[str, Any]], fractions) -> list[dict[str, Any]]:
    """Accuracy of each family interpolated at equal measured latency (fraction of dense)."""
    out = []
    for (net, thr) in dict.fromkeys((r["network"], r["threads"]) for r in rows):
        dense = next(r for r in rows if r["network"] == net and r["threads"] == thr and r["family"] == "dense")
        for f in fractions:
            entry = {"network": net, "threads": thr, "latency_fraction": f}
            for fam in ("macs", "latency"):
                pts = sorted((r["measured_ratio"], r["top1"]) for r in rows if r["network"] == net
                             and r["threads"] == thr and r["family"] in (fam, "dense") and r["top1"] is not None)
                xs = [p[0] for p in pts]
                entry[f"{fam}_top1"] = (float(np.interp(f, xs, [p[1] for p in pts]))
                                        if pts and xs[0] <= f <= xs[-1] else None)
            entry["dense_ms"] = dense["measured_ms"]
            out.append(entry)
    return out


# ----- main --------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    meta = common.start(NAME, args.quick, args.verbose)
    start = time.perf_counter()
    torch.set_num_threads(1 if args.quick else max(1, torch.get_num_threads()))
    from legr_edge.data import load_dataset
    data = load_dataset("digits", None, val_fraction=0.1, seed=0)
    info = data.info
    base_profile = load_profile(args.profile)
    rows, tables, acc_cache = [], [], {}
    for network in args.models:
        dense = trained_dense(network, args.train_epochs.get(network, 0), data, args.work_dir)
        run = export_dense(network, dense, info, data, args.work_dir)
        dense_graph = lg.read_dense(run / "onnx" / "dense.onnx")
        for threads in args.threads_list:
            profile = dataclasses.replace(base_profile, threads=threads, name=f"{base_profile.name}-t{threads}")
            table, trow = make_table(run, profile, args, network, threads)
            tables.append(trow)
            members, (coupling, lat_cost) = families(network, dense, info, table, args.targets, profile.round_to)
            folder = args.work_dir / network / f"members_t{threads}"
            paths = [member_onnx(dense_graph, lat_cost, m, folder) for m in members]
            if args.train_epochs.get(network, 0) > 0:
                accuracy(members, dense, coupling, data, args.finetune_epochs, acc_cache)
            load = time_members(members, paths, dense_graph.input_shape, profile, args)
            rows += rows_for(members, threads, load, table.dense_ms())
            trow["dense_measured_ms"] = rows[-len(members)]["measured_ms"]
    equal = equal_latency(rows, args.equal_latencies)
    out = args.out or common.default_out(NAME, args.quick)
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                if k not in ("out", "work_dir", "verbose")}
    common.write_results(out, meta, rows, COLUMNS, settings, {"tables": tables, "equal_latency": equal},
                         extra_csvs={"tables.csv": (tables, TABLE_COLUMNS)})
    plot(rows, out / f"{NAME}.png")
    elapsed = time.perf_counter() - start
    report(meta, args, rows, tables, equal, out, elapsed)
    return 0


def make_table(run: Path, profile, args, network: str, threads: int) -> tuple[LatencyTable, dict[str, Any]]:
    settings = Settings(round_to=profile.round_to, rounds=args.table_rounds, layer_seconds=args.table_layer_seconds,
                        max_widths=args.table_max_widths, configs=args.table_configs,
                        e2e_seconds=args.min_seconds)
    load0 = os.getloadavg()[0]
    data = build_table(run, profile, settings, plot=True)
    table = LatencyTable(data)
    err, cal = data["error"], data["calibration"]
    return table, {"network": network, "threads": threads, "build_s": data["build_seconds"],
                   "held_out_median_pct": err["held_out_median_pct"], "held_out_max_pct": err["held_out_max_pct"],
                   "fit_median_pct": err["fit_median_pct"], "calibration": cal["kind"], "scale": cal["scale"],
                   "overhead_ms": cal["overhead_ms"], "dense_predicted_ms": table.dense_ms(),
                   "graphs": data["timing"]["points"], "noise_ms": data["noise_ms"],
                   "load_avg": (load0 + os.getloadavg()[0]) / 2}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = common.pyplot()
    keys = list(dict.fromkeys((r["network"], r["threads"]) for r in rows))
    fig, axes = plt.subplots(2, len(keys), figsize=(4.6 * len(keys), 8), squeeze=False)
    for col, (net, thr) in enumerate(keys):
        sel = [r for r in rows if r["network"] == net and r["threads"] == thr]
        ax = axes[0][col]
        lat = [r for r in sel if r["family"] == "latency"]
        mac = [r for r in sel if r["family"] == "macs"]
        ax.plot([0, 1], [0, 1], ":", c="gray", label="measured = target")
        ax.plot([r["target"] for r in lat], [r["measured_ratio"] for r in lat], "o-", label="latency targets")
        ax.plot([r["target"] for r in mac], [r["measured_ratio"] for r in mac], "s--", label="MAC targets")
        ax.set_xlabel("target (fraction of dense latency / MACs)")
        ax.set_ylabel("measured latency / dense")
        ax.set_title(f"{net}, ORT {thr or 'all'} thread(s)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax = axes[1][col]
        for fam, style in (("latency", "o-"), ("macs", "s--")):
            pts = sorted((r["measured_ms"], r["top1"]) for r in sel if r["family"] in (fam, "dense")
                         and r["top1"] is not None)
            if pts:
                ax.plot(*zip(*pts), style, label=f"{fam}-targeted")
        ax.set_xlabel("measured latency (ms, batch 1)")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "accuracy not measured\n(random-init dense)", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    common.save_figure(fig, path)


def _f(v, spec=".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def report(meta, args, rows, tables, equal, out: Path, elapsed: float) -> None:
    t_rows = [(t["network"], t["threads"] or "all", _f(t["build_s"], ".0f"), t["graphs"],
               _f(t["held_out_median_pct"], ".1f"), _f(t["held_out_max_pct"], ".1f"), t["calibration"],
               _f(t["dense_predicted_ms"]), _f(t.get("dense_measured_ms")), _f(t["load_avg"], ".1f"))
              for t in tables]
    t_head = ("network", "threads", "build s", "graphs", "held-out median err %", "max err %", "calibration",
              "dense predicted ms", "dense measured ms", "load avg")
    m_rows = [(r["network"], r["threads"] or "all", r["name"], _f(r["target"], ".2f"), _f(r["macs_ratio"]),
               _f(r["target_ms"], ".4f"), _f(r["predicted_ms"], ".4f"), _f(r["measured_ms"], ".4f"),
               _f(r["measured_ratio"]), _f(r["measured_over_target"]), _f(r["measured_over_predicted"]),
               _f(r["staircase_channels"], "d") if r["staircase_channels"] is not None else "-",
               _f(r["top1_bnrecal"], ".1f"), _f(r["top1"], ".1f"))
              for r in rows]
    m_head = ("network", "threads", "member", "target", "MACs", "target ms", "predicted ms", "measured ms",
              "measured/dense", "meas/target", "meas/pred", "staircase ch", "top-1 BN-recal", "top-1")
    e_rows = [(e["network"], e["threads"] or "all", _f(e["latency_fraction"], ".2f"),
               _f(e["macs_top1"], ".1f"), _f(e["latency_top1"], ".1f")) for e in equal]
    lat = [r for r in rows if r["family"] == "latency"]
    within = sum(abs(r["measured_over_target"] - 1) <= 0.10 for r in lat)
    print(common.text_table(t_rows, t_head))
    print(common.text_table(m_rows, m_head))
    print(common.text_table(e_rows, ("network", "threads", "latency", "MAC-family top-1", "latency-family top-1")))
    acc_note = (f"Accuracy: dense trained {args.train_epochs} epochs on digits; members pruned, BatchNorm "
                f"re-estimated on 8 training batches ('top-1 BN-recal'), then fine-tuned {args.finetune_epochs} "
                "epoch(s) ('top-1'); test split. Both families share the dense weights and the ranking (L2, "
                "identity alpha/kappa)." if any(r["top1"] is not None for r in rows)
                else "Accuracy: not measured (random-init dense in this mode).")
    body = "\n\n".join([
        f"Latency-targeted vs MAC-targeted families, {', '.join(args.models)}, profile {args.profile} "
        f"(ONNX Runtime CPU, batch 1), threads {args.threads_list} (0 = all). Total {elapsed / 60:.1f} min. "
        f"Latency-targeted members within 10% of their target (measured fraction of dense vs target): "
        f"{within} of {len(lat)}.",
        "**The machine is shared** (2 cores, other agents running tests): the load average is recorded per "
        "table and per timing run; members are timed interleaved in random order over "
        f"{args.rounds} rounds and ratios to dense are taken per round, which cancels slow drift but not "
        "bursts, so single numbers carry several percent of noise.",
        "### Latency tables (build time, held-out prediction error)",
        common.md_table(t_rows, t_head),
        "### Members: target, predicted and measured latency",
        "`target` is a fraction of dense latency (latency family) or of dense MACs (MAC family); "
        "`target ms` = target x the table's predicted dense latency; `measured/dense` is the median over "
        "rounds of the member's median / dense's median in the same round; `meas/target` = that / target; "
        "`staircase ch` = channels the staircase step gave back.",
        common.md_table(m_rows, m_head),
        "### Accuracy at equal measured latency (interpolated along each family)",
        acc_note,
        common.md_table(e_rows, ("network", "threads", "latency (fraction of dense)", "MAC-family top-1",
                                 "latency-family top-1")),
        f"Plot: [{NAME}.png]({common.rel(out / (NAME + '.png'))}); raw rows: "
        f"[results.csv]({common.rel(out / 'results.csv')}), tables: [tables.csv]({common.rel(out / 'tables.csv')}).",
    ])
    common.update_results_md(meta, body)


if __name__ == "__main__":
    raise SystemExit(main())
