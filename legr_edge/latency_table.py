"""Measure a per-layer latency table of a run's dense network on this device (no torch).

For every prunable conv/linear layer signature of RUN's dense ONNX (channels, kernel,
stride, padding, groups, input size; batch from the profile) this builds single-layer
ONNX graphs over the widths the search can produce (multiples of --round-to between
the per-layer floor and the full width; at most --max-widths per axis, interpolated
in between) and times them with the profile's backend and timing loop, in --rounds
interleaved rounds (medians of the pooled samples). It then times the dense network
and --configs pruned configurations (built from the dense ONNX, widths drawn at
random) end to end, fits what the table does not see (predicted = scale * sum of
layers + overhead), and reports the prediction error on the held-out half.

    # ONNX Runtime on this CPU (the default profile)
    python -m legr_edge.latency_table runs/resnet56-cifar10

    # on a Jetson, TensorRT (one cached engine per single-layer graph)
    python -m legr_edge.latency_table runs/resnet56-cifar10 --profile profiles/jetson-orin-nano.toml

    # a quick, coarser table: 6 widths per axis, 2 rounds, shorter timing
    python -m legr_edge.latency_table runs/resnet20-digits --max-widths 6 --rounds 2 --layer-seconds 0.01

Writes (atomically) RUN/latency_table_<profile>.json and RUN/latency_table_<profile>.png
(latency against width per layer signature: the staircase), single-layer graphs and
engines under RUN/engines/<profile>/latency/. Then, on the workstation:

    python -m legr_edge.search ... --cost latency --latency-table RUN/latency_table_cpu-ort.json
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from legr_edge import __version__
from legr_edge.cli import run_cli, setup_logging
from legr_edge.device.backends import Backend, ModelSpec, get_backend
from legr_edge.device.fingerprint import collect_fingerprint, short_device_name
from legr_edge.device.profiles import Profile, load_profile
from legr_edge.rundir import run_summary as read_run_config, verified_onnx
from legr_edge.device.timing import measure
from legr_edge.errors import LegrError
from legr_edge.io import atomic_path, sha256_file, write_bytes, write_text
from legr_edge.latency import graph as lg
from legr_edge.latency.table import (FORMAT, LatencyTable, allowed_widths, fit_calibration,
                                     relative_errors, sample_widths)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the table is built (recorded in the table as ``grid_rules`` and ``timing``)."""

    round_to: int
    method: str = "marginal"              # "marginal": T(2 copies) - T(1 copy); "single": T(1 copy)
    min_fraction: float = 0.1
    min_channels: int = 2
    max_widths: int = 16
    rounds: int = 3
    layer_seconds: float = 0.03
    layer_warmup_s: float = 0.01
    layer_min_iters: int = 10
    configs: int = 8
    e2e_seconds: Optional[float] = None   # per network per round; default the profile's / rounds
    batch_size: Optional[int] = None
    seed: int = 0


@dataclasses.dataclass
class Point:
    """One timed graph: a grid point of a signature, or a whole network."""

    key: Tuple[Any, ...]
    spec: ModelSpec
    round_medians: List[float] = dataclasses.field(default_factory=list)
    samples: List[float] = dataclasses.field(default_factory=list)
    info: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def noise(self) -> float:
        return float(np.std(self.round_medians)) if len(self.round_medians) > 1 else 0.0


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m legr_edge.latency_table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="run directory with onnx/manifest.json and the dense ONNX")
    p.add_argument("--profile", default="cpu-ort", help="device profile (TOML path or name; default cpu-ort)")
    p.add_argument("--onnx", type=Path, help="the dense ONNX (default: the manifest's 'dense' entry)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the profile's first)")
    p.add_argument("--round-to", type=int, help="width step (default: the profile's round_to)")
    p.add_argument("--method", choices=("marginal", "single"), default="marginal",
                   help="marginal (default): a layer's cost = time of two parallel copies minus one copy, "
                        "so per-graph costs cancel; single: time of one copy")
    p.add_argument("--min-fraction", type=float, default=0.1, help="per-layer floor, as the search's")
    p.add_argument("--min-channels", type=int, default=2, help="per-layer floor, as the search's")
    p.add_argument("--max-widths", type=int, default=16, help="widths per axis before sampling (default 16)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    p.add_argument("--layer-seconds", type=float, default=0.03,
                   help="timing per single-layer graph per round (default 0.03)")
    p.add_argument("--configs", type=int, default=8,
                   help="pruned configurations timed end to end (half fit, half held out; default 8)")
    p.add_argument("--e2e-seconds", type=float,
                   help="timing per whole network per round (default: the profile's min_seconds / rounds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plot", action="store_true", help="skip the staircase plot")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    for name in ("rounds", "max_widths", "configs"):
        if getattr(args, name) < (2 if name == "max_widths" else 1):
            p.error(f"--{name.replace('_', '-')} too small: {getattr(args, name)}")
    if args.layer_seconds <= 0:
        p.error(f"--layer-seconds must be > 0, got {args.layer_seconds}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        profile = load_profile(args.profile)
        settings = Settings(round_to=args.round_to or profile.round_to, method=args.method, min_fraction=args.min_fraction,
                            min_channels=args.min_channels, max_widths=args.max_widths, rounds=args.rounds,
                            layer_seconds=args.layer_seconds, configs=args.configs,
                            e2e_seconds=args.e2e_seconds, batch_size=args.batch_size, seed=args.seed)
        table = build_table(args.run, profile, settings, dense_onnx=args.onnx, plot=not args.no_plot)
        print(summary(table))
        return 0
    return run_cli(body)


# ----- the command ------------------------------------------------------------------------
def build_table(run: Path, profile: Profile, settings: Settings, dense_onnx: Optional[Path] = None,
                plot: bool = True) -> Dict[str, Any]:
    """Measure and write RUN/latency_table_<profile>.json; returns its content."""
    start = time.perf_counter()
    path = _dense_path(run, dense_onnx)
    dense = lg.read_dense(path)
    batch = settings.batch_size or profile.batch_sizes[0]
    if settings.round_to < 1 or batch < 1:
        raise LegrError(f"--round-to and --batch-size must be >= 1, got {settings.round_to}, {batch}")
    if profile.backend == "torch":
        raise LegrError(f"profile {profile.name!r} uses the torch backend; a latency table times ONNX "
                        "graphs: use an onnxruntime or tensorrt profile")
    backend_cls = get_backend(profile.backend)
    backend_cls.check_available(profile)
    cache = run / "engines" / profile.name / "latency"
    grids = layer_grids(dense, settings)
    points = grid_points(dense, grids, profile, cache, settings.method)
    configs = e2e_configs(dense, settings)
    networks = network_points(dense, configs, profile, cache)
    info = time_all(backend_cls, profile, batch, settings, points, networks)
    table = assemble(run, path, dense, profile, settings, batch, grids, points, networks, configs, info)
    table["build_seconds"] = round(time.perf_counter() - start, 2)
    out = run / f"latency_table_{profile.name}.json"
    write_text(out, json.dumps(table, indent=1) + "\n")
    LatencyTable(table, str(out))  # what we wrote must load
    if plot:
        plot_staircase(table, run / f"latency_table_{profile.name}.png")
    log.info("wrote %s in %.1f s", out, table["build_seconds"])
    return table


def _dense_path(run: Path, dense_onnx: Optional[Path]) -> Path:
    if dense_onnx is not None:
        if not dense_onnx.is_file():
            raise LegrError(f"--onnx {dense_onnx}: file not found")
        return dense_onnx
    if not run.is_dir():
        raise LegrError(f"{run}: not a directory (expected a run directory with onnx/manifest.json)")
    return verified_onnx(run, "dense")[0]  # the run-directory contract: confined, sha256 checked


def layer_grids(dense: lg.DenseGraph, s: Settings) -> Dict[str, Dict[str, Any]]:
    """Per signature: the in/out widths to measure (fixed sides keep their full width)."""
    grids: Dict[str, Dict[str, Any]] = {}
    for layer in dense.layers:
        if layer.signature in grids:
            continue

        def axis(size: int, group: int) -> List[int]:
            if dense.fixed[group]:
                return [size]
            return sample_widths(allowed_widths(size, s.round_to, s.min_fraction, s.min_channels),
                                 s.max_widths)
        outs = axis(layer.cout, layer.out_group)
        ins = outs if layer.depthwise else axis(layer.cin, layer.in_group)
        grids[layer.signature] = {"layer": layer, "in_widths": ins, "out_widths": outs,
                                  "depthwise": layer.depthwise}
    return grids


def _spec(name: str, model, cache: Path, input_name: str, output_name: str,
          input_shape: Tuple[int, ...]) -> ModelSpec:
    data = model.SerializeToString()
    digest = hashlib.sha256(data).hexdigest()
    path = cache / "graphs" / f"{digest[:20]}.onnx"
    if not path.is_file():
        write_bytes(path, data)
    return ModelSpec(name=name, onnx_path=path, onnx_sha256=digest, input_name=input_name,
                     output_name=output_name, input_shape=tuple(input_shape), cache_dir=cache)


def grid_points(dense: lg.DenseGraph, grids: Dict[str, Dict[str, Any]], profile: Profile,
                cache: Path, method: str = "marginal") -> List[Point]:
    points = []
    for sig, g in grids.items():
        layer = g["layer"]
        pairs = ([(w, w) for w in g["out_widths"]] if g["depthwise"]
                 else [(ci, co) for ci in g["in_widths"] for co in g["out_widths"]])
        shape_of = (lambda ci: (ci,)) if layer.op == "linear" else (lambda ci: (ci, *layer.hw))
        for ci, co in pairs:
            for copies in ((1, 2) if method == "marginal" else (1,)):
                model = lg.single_layer(layer, ci, co, min(profile.opset, 17), copies=copies)
                points.append(Point((sig, ci, co, copies), _spec(f"{layer.name}[{ci}x{co}]x{copies}", model,
                                                                 cache, "x", "y", shape_of(ci))))
    return points


def e2e_configs(dense: lg.DenseGraph, s: Settings) -> List[Dict[int, int]]:
    """Dense plus ``s.configs`` random pruned widths, spread from ~0.25 to ~0.9 of full width."""
    rng = np.random.default_rng(s.seed)
    fracs = rng.permutation(np.linspace(0.25, 0.9, s.configs))
    configs: List[Dict[int, int]] = [{}]
    for f in fracs:
        widths = {}
        for g in dense.prunable_groups:
            size = dense.group_size[g]
            allowed = np.asarray(allowed_widths(size, s.round_to, s.min_fraction, s.min_channels))
            want = f * size * rng.uniform(0.75, 1.25)
            widths[g] = int(allowed[np.argmin(np.abs(allowed - want))])
        configs.append(widths)
    return configs


def network_points(dense: lg.DenseGraph, configs: List[Dict[int, int]], profile: Profile,
                   cache: Path) -> List[Point]:
    out_name = dense.model.graph.output[0].name
    points = []
    for i, widths in enumerate(configs):
        model = lg.pruned(dense, widths) if widths else dense.model
        name = "dense" if not widths else f"config{i}"
        points.append(Point(("net", i), _spec(name, model, cache, dense.input_name, out_name,
                                              dense.input_shape)))
    return points


def time_all(backend_cls, profile: Profile, batch: int, s: Settings, points: List[Point],
             networks: List[Point]) -> Dict[str, Any]:
    """Interleaved rounds over every grid point and network; returns one backend's info()."""
    from tqdm import tqdm

    e2e_seconds = s.e2e_seconds if s.e2e_seconds is not None else profile.min_seconds / s.rounds
    e2e_iters = max(1, math.ceil(profile.min_iters / s.rounds))
    rng = np.random.default_rng(s.seed)
    todo = points + networks
    # Sub-millisecond single layers on a shared CPU trip timing's per-measurement "noisy"
    # warning hundreds of times; the table records the spread between rounds instead.
    timing_log = logging.getLogger("legr_edge.device.timing")
    level = timing_log.level
    timing_log.setLevel(logging.ERROR)
    try:
        return _rounds(backend_cls, profile, batch, s, todo, rng, (e2e_iters, e2e_seconds), tqdm)
    finally:
        timing_log.setLevel(level)


def _rounds(backend_cls, profile: Profile, batch: int, s: Settings, todo: List[Point], rng,
            e2e: Tuple[int, float], tqdm) -> Dict[str, Any]:
    info: Dict[str, Any] = {}
    e2e_iters, e2e_seconds = e2e
    with tqdm(total=s.rounds * len(todo), desc="latency table", unit="graph", disable=None,
              file=sys.stderr) as bar:
        for _ in range(s.rounds):
            for i in rng.permutation(len(todo)):
                p = todo[i]
                net = p.key[0] == "net"
                timing = ((profile.warmup_s / s.rounds, e2e_iters, e2e_seconds) if net else
                          (min(profile.warmup_s, s.layer_warmup_s), s.layer_min_iters, s.layer_seconds))
                info = _time_point(backend_cls, profile, batch, p, timing) or info
                bar.update(1)
    return info


def _time_point(backend_cls, profile: Profile, batch: int, p: Point,
                timing: Tuple[float, int, float]) -> Dict[str, Any]:
    """Build (cached where the backend caches), time one round, free. Backend life cycle only."""
    backend: Backend = backend_cls(p.spec, profile)
    try:
        with backend:
            backend.prepare(batch)
            m = measure(backend.step, batch_size=batch, warmup_s=timing[0], min_iters=timing[1],
                        min_seconds=timing[2], label=p.spec.name)
            info = backend.info()
    except LegrError:
        raise
    except Exception as e:  # a table with a hole is no table: stop with the graph that failed
        raise LegrError(f"{p.spec.name} ({p.spec.onnx_path}): {type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
    p.samples.extend(m.samples_ms)
    p.round_medians.append(m.stats.median)
    return info


def assemble(run: Path, path: Path, dense: lg.DenseGraph, profile: Profile, s: Settings, batch: int,
             grids, points: List[Point], networks: List[Point], configs, info) -> Dict[str, Any]:
    cell = _cell_fn(points, s.method)
    signatures = {}
    for sig, g in grids.items():
        if g["depthwise"]:
            ms, noise = zip(*[cell(sig, w, w) for w in g["out_widths"]])
        else:
            rows = [[cell(sig, ci, co) for co in g["out_widths"]] for ci in g["in_widths"]]
            ms = [[c[0] for c in r] for r in rows]
            noise = [[c[1] for c in r] for r in rows]
        signatures[sig] = {"in_widths": g["in_widths"], "out_widths": g["out_widths"], "ms": ms,
                           "noise_ms": noise, "depthwise": g["depthwise"], "layer": g["layer"].to_dict()}
    layers = [{"name": l.name, "signature": l.signature, "op": l.op, "cin": l.cin, "cout": l.cout,
               "in_fixed": dense.fixed[l.in_group], "out_fixed": dense.fixed[l.out_group]}
              for l in dense.layers]
    fingerprint = collect_fingerprint()
    table: Dict[str, Any] = {
        "format": FORMAT, "created_at": _now(), "legr_edge_version": __version__,
        "run": {**read_run_config(run), "dense_onnx": str(path), "dense_onnx_sha256": sha256_file(path)},
        "profile": profile.to_dict(), "profile_sha256": profile.digest(), "backend": profile.backend,
        "precision": info.get("precision", profile.precision), "batch_size": batch,
        "device": short_device_name(fingerprint), "fingerprint": fingerprint,
        "backend_info": {k: v for k, v in info.items() if k != "warnings"},
        "grid_rules": {"round_to": s.round_to, "min_fraction": s.min_fraction,
                       "min_channels": s.min_channels, "max_widths": s.max_widths},
        "timing": {"rounds": s.rounds, "layer_seconds": s.layer_seconds, "layer_warmup_s": s.layer_warmup_s,
                   "layer_min_iters": s.layer_min_iters, "e2e_seconds": s.e2e_seconds,
                   "points": len(points), "networks": len(networks)},
        "layers": layers, "signatures": signatures,
        "noise_ms": _median_noise(signatures),
        "calibration": {"kind": "constant", "scale": 1.0, "overhead_ms": 0.0},
    }
    table["calibration"], table["error"] = calibrate(table, dense, networks, configs)
    return table


def _cell_fn(points: List[Point], method: str):
    """(ms, noise) of a grid cell: one copy's median, or the marginal cost of the second copy
    (difference of medians; noise from the spread of the per-round differences)."""
    by_key = {p.key: p for p in points}

    def cell(sig: str, ci: int, co: int) -> Tuple[float, float]:
        one = by_key[(sig, ci, co, 1)]
        if method != "marginal":
            return one.median, one.noise
        two = by_key[(sig, ci, co, 2)]
        diffs = np.subtract(two.round_medians, one.round_medians)
        noise = float(np.std(diffs)) if len(diffs) > 1 else 0.0
        return max(two.median - one.median, 1e-6), noise
    return cell


def _median_noise(signatures: Dict[str, Dict[str, Any]]) -> float:
    values = [v for s in signatures.values() for v in np.ravel(s["noise_ms"])]
    return float(np.median(values)) if values else 0.0


def calibrate(table: Dict[str, Any], dense: lg.DenseGraph, networks: List[Point], configs):
    """Fit on the dense network and every other configuration; the rest are held out."""
    raw = LatencyTable(table)
    rows = []
    for i, (p, widths) in enumerate(zip(networks, configs)):
        model = lg.pruned(dense, widths) if widths else dense.model
        layer_sum = raw.layer_sum(lg.layer_widths(model))
        rows.append({"name": p.spec.name, "role": "fit" if i % 2 == 0 else "held_out",
                     "measured_ms": p.median, "layer_sum_ms": layer_sum,
                     "widths": {str(g): w for g, w in widths.items()}})
    fit = [r for r in rows if r["role"] == "fit"]
    held = [r for r in rows if r["role"] == "held_out"]
    cal = fit_calibration([r["layer_sum_ms"] for r in fit], [r["measured_ms"] for r in fit])
    for r in rows:
        r["predicted_ms"] = cal["scale"] * r["layer_sum_ms"] + cal["overhead_ms"]
        r["error_pct"] = 100.0 * (r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"]
    err_fit = np.abs(relative_errors(cal, [r["layer_sum_ms"] for r in fit], [r["measured_ms"] for r in fit]))
    err = np.abs([r["error_pct"] for r in held]) if held else np.array([np.nan])
    error = {"held_out_median_pct": float(np.median(err)), "held_out_max_pct": float(np.max(err)),
             "fit_median_pct": float(np.median(err_fit)), "n_held_out": len(held), "n_fit": len(fit)}
    return {**cal, "configs": rows}, error


def summary(table: Dict[str, Any]) -> str:
    cal, err = table["calibration"], table["error"]
    lines = [f"latency table: {len(table['signatures'])} signatures, {table['timing']['points']} single-layer "
             f"graphs, {len(table['layers'])} layers, batch {table['batch_size']}, {table['device']}",
             f"calibration ({cal['kind']}): predicted = {cal['scale']:.3f} x sum(layers) + "
             f"{cal['overhead_ms']:.4f} ms; dense predicted {LatencyTable(table).dense_ms():.4f} ms",
             f"held-out error: median {err['held_out_median_pct']:.1f}%, max {err['held_out_max_pct']:.1f}% "
             f"({err['n_held_out']} networks); fit median {err['fit_median_pct']:.1f}%; "
             f"built in {table.get('build_seconds', 0):.1f} s"]
    for r in cal["configs"]:
        lines.append(f"  {r['name']:<9} {r['role']:<8} measured {r['measured_ms']:.4f} ms  "
                     f"predicted {r['predicted_ms']:.4f} ms  ({r['error_pct']:+.1f}%)")
    return "\n".join(lines)


def plot_staircase(table: Dict[str, Any], path: Path) -> bool:
    """Latency against output width (at the widest input) per signature; matplotlib optional."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: %s not written", path)
        return False
    sigs = [(k, v) for k, v in table["signatures"].items() if len(v["out_widths"]) > 1
            or len(v["in_widths"]) > 1]
    if not sigs:
        return False
    cols = min(3, len(sigs))
    rows = math.ceil(len(sigs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (sig, s) in zip(axes.flat, sigs):
        _plot_signature(ax, sig, s)
    for ax in list(axes.flat)[len(sigs):]:
        ax.set_visible(False)
    fig.suptitle(f"per-layer latency, {table['device']} ({table['profile'].get('name')}, "
                 f"batch {table['batch_size']})", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True


def _plot_signature(ax, sig: str, s: Dict[str, Any]) -> None:
    ms, noise = np.asarray(s["ms"]) * 1000, np.asarray(s["noise_ms"]) * 1000
    if s["depthwise"]:
        ax.errorbar(s["out_widths"], ms, yerr=noise, fmt="o-", drawstyle="steps-mid", capsize=2)
        ax.set_xlabel("channels")
    elif len(s["out_widths"]) > 1:
        for i in sorted({0, len(s["in_widths"]) // 2, len(s["in_widths"]) - 1}):
            ax.errorbar(s["out_widths"], ms[i], yerr=noise[i], fmt="o-", capsize=2, ms=3,
                        label=f"in {s['in_widths'][i]}")
        ax.set_xlabel("output channels")
        ax.legend(fontsize=6)
    else:
        ax.errorbar(s["in_widths"], ms[:, 0], yerr=noise[:, 0], fmt="o-", capsize=2, ms=3)
        ax.set_xlabel("input channels")
    ax.set_ylabel("us")
    ax.set_title(sig, fontsize=6)
    ax.grid(alpha=0.3)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


if __name__ == "__main__":
    raise SystemExit(main())
