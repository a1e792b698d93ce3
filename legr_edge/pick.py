"""Choose the model to deploy from a latency table written by legr_edge.profile.

    # most accurate model whose median latency at batch 1 fits 2 ms
    python -m legr_edge.pick runs/cifar10_resnet56/latency_cpu-ort.csv --max-latency-ms 2

    # a hard real-time budget: judge by p99, at batch 8
    python -m legr_edge.pick runs/cifar10_resnet56/latency_jetson-orin-nano.csv \\
        --max-latency-ms 1.5 --percentile 99 --batch-size 8

    # fastest model that keeps at least 92% deployed top-1
    python -m legr_edge.pick runs/cifar10_resnet56/latency_cpu-ort.csv --min-top1 92

    # both constraints (most accurate within budget, above the floor), JSON for scripts
    python -m legr_edge.pick runs/cifar10_resnet56/latency_cpu-ort.csv --max-latency-ms 2 --min-top1 90 --json

Accuracy is the deployed top-1 measured by the profile command (ties go to the
faster model); only rows with status=ok count. Prints the model, its ONNX file,
model directory and TensorRT engine (if any). Exit 1 with the closest model named
when nothing fits, or when the arguments or the table are unusable.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from legr_edge.cli import EXIT_STATUS, run_cli, setup_logging
from legr_edge.errors import LegrError
from legr_edge.io import read_csv
from legr_edge.rundir import NAME_RE, number, resolve_inside

log = logging.getLogger(__name__)

PERCENTILE_COLUMN = {"50": "latency_ms_median", "90": "latency_ms_p90", "99": "latency_ms_p99"}
REQUIRED_COLUMNS = ("name", "batch_size", "deployed_top1", "status", *PERCENTILE_COLUMN.values())


@dataclass(frozen=True)
class Candidate:
    name: str
    top1: float
    latency_ms: float
    row: dict[str, str]


@dataclass(frozen=True)
class Choice:
    """The answer, as printed with --json."""

    name: str
    deployed_top1: float
    latency_ms: float
    percentile: int
    batch_size: int
    latency_ms_median: float | None
    throughput_ips: float | None
    macs_ratio: float | None
    speedup: float | None
    onnx_path: str | None
    model_dir: str | None
    engine_path: str | None
    profile: str | None
    device: str | None
    max_latency_ms: float | None
    min_top1: float | None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m legr_edge.pick", description=__doc__, epilog=EXIT_STATUS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", type=Path, help="RUN/latency_<profile>.csv from legr_edge.profile")
    p.add_argument("--max-latency-ms", default=None, help="latency budget in ms (> 0)")
    p.add_argument("--percentile", default="50", choices=sorted(PERCENTILE_COLUMN),
                   help="judge latency by the median (50, default), p90 or p99")
    p.add_argument("--batch-size", default=None, help="batch size to judge (default: 1 if measured, else the smallest)")
    p.add_argument("--min-top1", default=None, help="minimum deployed top-1 in percent")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    return run_cli(lambda: pick_command(args))


def pick_command(args: argparse.Namespace) -> int:
    budget = _number(args.max_latency_ms, "--max-latency-ms", positive=True)
    floor = _number(args.min_top1, "--min-top1", positive=False)
    if budget is None and floor is None:
        raise LegrError("give --max-latency-ms and/or --min-top1 (see --help)")
    if floor is not None and not 0 <= floor <= 100:
        raise LegrError(f"--min-top1 must be a percentage between 0 and 100, got {args.min_top1!r}")
    rows = load_table(args.table)
    batch = _batch_size(rows, args.batch_size, args.table)
    cands = candidates(rows, batch, PERCENTILE_COLUMN[args.percentile])
    if not cands:
        raise LegrError(f"{args.table}: no successful measurement at batch size {batch}")
    best = choose(cands, budget, floor)
    if best is None:
        msg = nothing_fits_message(cands, budget, floor, int(args.percentile), batch)
        if args.json:
            near = closest(cands, budget, floor)
            print(json.dumps({"fits": False, "message": msg, "closest": asdict(_choice(
                near, args, batch, budget, floor))}, indent=2))
        raise LegrError(msg)
    choice = _choice(best, args, batch, budget, floor)
    print(json.dumps({"fits": True, **asdict(choice)}, indent=2) if args.json else render(choice))
    return 0


def _number(text: str | None, flag: str, *, positive: bool) -> float | None:
    if text is None:
        return None
    try:
        v = float(text)
    except ValueError:
        raise LegrError(f"{flag} must be a number, got {text!r}") from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise LegrError(f"{flag} must be a positive number of milliseconds, got {text!r}"
                        if positive else f"{flag} must be a finite number, got {text!r}")
    return v


def load_table(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise LegrError(f"{path}: no such latency table (python -m legr_edge.profile RUN writes it)")
    rows = read_csv(path)
    if not rows:
        raise LegrError(f"{path}: empty latency table")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
    if missing:
        raise LegrError(f"{path}: missing column(s) {', '.join(missing)}; "
                        "is this a latency_<profile>.csv from legr_edge.profile?")
    for i, r in enumerate(rows, start=2):
        if not NAME_RE.match(r.get("name") or ""):
            raise LegrError(f"{path} line {i}: model name {r.get('name')!r} is not a plain name")
    return rows


def _float(v: str | None) -> float | None:
    try:
        f = float(v) if v not in (None, "") else None
    except ValueError:
        return None
    return f if f is not None and math.isfinite(f) else None


def _batch_size(rows: list[dict[str, str]], wanted: str | None, path: Path) -> int:
    sizes = sorted({int(b) for b in (_float(r.get("batch_size")) for r in rows if r.get("status") == "ok")
                    if b is not None and b >= 1 and b == int(b)})
    if not sizes:
        raise LegrError(f"{path}: no model with status=ok (see the error column)")
    if wanted is None:
        return 1 if 1 in sizes else sizes[0]
    try:
        b = int(wanted)
    except ValueError:
        raise LegrError(f"--batch-size must be an integer, got {wanted!r}") from None
    if b not in sizes:
        raise LegrError(f"--batch-size {b} was not measured in {path} (measured: {sizes})")
    return b


def candidates(rows: list[dict[str, str]], batch: int, column: str) -> list[Candidate]:
    """status=ok rows at ``batch`` with a latency and a deployed top-1.

    An ok row whose numbers are nonsense (NaN, a latency <= 0, a top-1 outside [0, 100])
    is a LegrError: the table was damaged or edited, and no answer from it can be trusted.
    """
    out = []
    for i, r in enumerate(rows, start=2):
        if r.get("status") != "ok" or _float(r.get("batch_size")) != batch:
            continue
        where = f"line {i} ({r.get('name')!r})"
        lat = number(r.get(column), f"{where} column {column}", 0.0, None)
        top1 = number(r.get("deployed_top1"), f"{where} column deployed_top1", 0.0, 100.0)
        if lat is None or top1 is None:
            log.warning("%s: no %s or deployed_top1; ignored", r.get("name"), column)
            continue
        if lat <= 0:
            raise LegrError(f"{where} column {column}: latency {lat} ms is not positive")
        out.append(Candidate(r["name"], top1, lat, r))
    return out


def choose(cands: list[Candidate], budget: float | None, floor: float | None) -> Candidate | None:
    """Within budget: most accurate (ties: faster). Only a floor: fastest (ties: more accurate)."""
    fits = [c for c in cands if (budget is None or c.latency_ms <= budget)
            and (floor is None or c.top1 >= floor)]
    if not fits:
        return None
    if budget is not None:
        return max(fits, key=lambda c: (c.top1, -c.latency_ms))
    return min(fits, key=lambda c: (c.latency_ms, -c.top1))


def closest(cands: list[Candidate], budget: float | None, floor: float | None) -> Candidate:
    """The model that misses by the least (sum of relative shortfalls)."""
    def miss(c: Candidate) -> tuple[float, float]:
        lat = max(0.0, c.latency_ms / budget - 1.0) if budget is not None else 0.0
        acc = max(0.0, (floor - c.top1) / floor) if floor else 0.0
        return lat + acc, c.latency_ms
    return min(cands, key=miss)


def nothing_fits_message(cands: list[Candidate], budget: float | None, floor: float | None,
                         percentile: int, batch: int) -> str:
    c = closest(cands, budget, floor)
    what = " and ".join(x for x in (
        f"p{percentile} latency <= {budget:g} ms" if budget is not None else "",
        f"deployed top-1 >= {floor:g}%" if floor is not None else "") if x)
    return (f"no model has {what} at batch {batch}; closest is {c.name} "
            f"(p{percentile} {c.latency_ms:.3f} ms, top-1 {c.top1:.2f}%)")


def _resolve(base: Path, rel: str | None) -> str | None:
    """A path the table names, which must stay inside the run (the table's folder)."""
    return str(resolve_inside(base, rel, f"{base} latency table")) if rel else None


def _choice(c: Candidate, args: argparse.Namespace, batch: int, budget: float | None,
            floor: float | None) -> Choice:
    r, run = c.row, args.table.parent
    return Choice(
        name=c.name, deployed_top1=c.top1, latency_ms=c.latency_ms,
        percentile=int(args.percentile), batch_size=batch,
        latency_ms_median=_float(r.get("latency_ms_median")),
        throughput_ips=_float(r.get("throughput_ips")), macs_ratio=_float(r.get("macs_ratio")),
        speedup=_float(r.get("speedup")),
        onnx_path=_resolve(run, r.get("onnx_file") or f"onnx/{c.name}.onnx"),
        model_dir=_resolve(run, r.get("model_dir") or f"models/{c.name}"),
        engine_path=_resolve(run, r.get("engine_path")),
        profile=r.get("profile") or None, device=r.get("device") or None,
        max_latency_ms=budget, min_top1=floor,
    )


def render(c: Choice) -> str:
    """Human-readable answer for stdout."""
    speed = f", {c.speedup:.2f}x dense" if c.speedup else ""
    lines = [
        f"{c.name}: deployed top-1 {c.deployed_top1:.2f}%, p{c.percentile} latency "
        f"{c.latency_ms:.3f} ms at batch {c.batch_size}{speed}"
        + (f" [{c.profile} on {c.device}]" if c.profile else ""),
        f"  onnx:   {c.onnx_path}",
        f"  model:  {c.model_dir}",
        f"  engine: {c.engine_path or '-'}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
