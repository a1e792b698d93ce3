"""Measure every model of a run directory on this device (no torch needed).

For each model of RUN/flops_table.csv: check that RUN/onnx/<name>.onnx matches the
sha256 in RUN/onnx/manifest.json, build it with the profile's backend, measure the
deployed top-1 on RUN/data/eval.npz, and time every batch size of the profile
(warm-up by time, then at least min_iters iterations AND min_seconds). Timing is
split into --rounds (default 3) interleaved rounds, each model in turn, with the
samples pooled: a machine whose speed drifts then skews all models alike instead of
whichever came last.

    # default: ONNX Runtime on this CPU (built-in profile, works anywhere)
    python -m legr_edge.profile runs/cifar10_resnet56

    # on a Jetson Orin Nano, TensorRT FP16 (clocks fixed first)
    sudo nvpmodel -m 0 && sudo jetson_clocks
    python -m legr_edge.profile runs/cifar10_resnet56 --profile profiles/jetson-orin-nano.toml

    # re-measure two models only, even if already measured, with debug logs
    python -m legr_edge.profile runs/cifar10_resnet56 --profile cpu-ort --models dense,legr_0.50 --force -v

Writes, next to the flops table (each file replaced atomically):
    RUN/latency_<profile>.csv   one row per model and batch size (pick reads it)
    RUN/latency_<profile>.json  raw samples, statistics, backend info, machine fingerprint
    RUN/latency_<profile>.png   top-1 vs MACs and top-1 vs measured latency, Pareto fronts
    RUN/engines/<profile>/      TensorRT engines and timing cache (reused when still valid)

Models already measured with the same ONNX sha256, the same profile settings and on
the same host are skipped unless --force. A model that fails (missing or corrupt
ONNX, build or run error) gets status=failed and the reason in `error`; the others
go on and the exit code stays 0. A backend that cannot run on this machine at all
(TensorRT or CUDA missing, TensorRT older than 8.5) fails every model with that reason,
also with exit code 0; exit code 1 is for bad input (run directory, profile, flags).
Then choose one:
    python -m legr_edge.pick runs/cifar10_resnet56/latency_cpu-ort.csv --max-latency-ms 2
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from legr_edge import __version__
from legr_edge.cli import run_cli, setup_logging
from legr_edge.device.backends import Backend, ModelSpec, get_backend
from legr_edge.device.backends.base import BackendUnavailable
from legr_edge.device.fingerprint import collect_fingerprint, short_device_name
from legr_edge.device.onnx_info import inspect_onnx
from legr_edge.device.profiles import Profile, load_profile
from legr_edge.device.report import format_table, plot_tradeoff
from legr_edge.device.rundir import (EvalData, ModelRow, check_onnx, load_eval, load_models,
                                     read_run_config)
from legr_edge.device.timing import TimingStats, measure
from legr_edge.errors import LegrError
from legr_edge.io import sha256_file, write_csv, write_text

log = logging.getLogger(__name__)

DEFAULT_ROUNDS = 3

CSV_COLUMNS = (
    "name", "target", "macs", "macs_ratio", "params", "val_top1", "test_top1",
    "deployed_top1", "top1_drop", "batch_size",
    "latency_ms_median", "latency_ms_mean", "latency_ms_min", "latency_ms_p90",
    "latency_ms_p95", "latency_ms_p99", "latency_ms_std", "latency_cv", "n_iters",
    "throughput_ips", "speedup", "predicted_ms", "measured_over_predicted",  # from a latency table
    "backend", "precision", "providers", "timing_source",
    "profile", "profile_sha256", "device", "host", "onnx_file", "onnx_sha256", "model_dir",
    "engine_path", "measured_at", "status", "error", "warnings",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m legr_edge.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="run directory (has flops_table.csv, onnx/, data/)")
    p.add_argument("--profile", default="cpu-ort",
                   help="device profile: a TOML path or a name from profiles/ (default: cpu-ort)")
    p.add_argument("--force", action="store_true", help="re-measure models already measured")
    p.add_argument("--models", default=None,
                   help="comma-separated model names to measure (default: all in the flops table)")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                   help="interleaved timing rounds (default %(default)s): every model is timed in each "
                        "round, round-robin, for min_seconds/rounds, and the samples are pooled, so "
                        "machine drift hits all models alike; 1 = one model after another")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (TensorRT builder log too)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    return run_cli(lambda: profile_run(args.run, args.profile, force=args.force,
                                       only=_split(args.models), rounds=args.rounds))


def _split(models: str | None) -> list[str] | None:
    if models is None:
        return None
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise LegrError("--models: give at least one model name, e.g. --models dense,legr_0.50")
    return names


# ----- the command --------------------------------------------------------------------
def profile_run(run: Path, profile_spec: str, *, force: bool = False,
                only: list[str] | None = None, rounds: int = DEFAULT_ROUNDS) -> int:
    """Validate everything up front (LegrError = exit 1, nothing written), then measure.

    Round 1 builds each model, checks its accuracy and times it; rounds 2..N time every
    model again in the same order and pool the samples (see ``--rounds``).
    """
    profile = load_profile(profile_spec)
    models = load_models(run)
    selected = _select(models, only, run)
    eval_data = load_eval(run)
    backend_cls = get_backend(profile.backend)
    unavailable = None
    try:
        backend_cls.check_available(profile)
    except BackendUnavailable as e:  # every model is recorded as failed with this reason
        log.error("%s", e)
        unavailable = str(e)
    fingerprint = collect_fingerprint()
    ctx = _Context(run, profile, backend_cls, eval_data, fingerprint, models, rounds)
    ctx.unavailable = unavailable
    records = _previous_records(ctx)
    measured = []
    for row in _progress(selected):
        if not force and _reusable(records.get(row.name), ctx, row):
            log.info("%s: already measured with this ONNX and profile; skipped (--force re-measures)",
                     row.name)
            continue
        records[row.name] = profile_model(ctx, row)
        measured.append(row)
        _write_results(ctx, records)  # after every model: an interrupted run keeps its work
    for round_no in range(2, rounds + 1):
        for row in measured:
            if records[row.name]["status"] == "ok":
                time_again(ctx, row, records[row.name], round_no)
        _write_results(ctx, records)
    for row in measured:
        log.info("%s", summary_line(records[row.name], row))
    rows = _write_results(ctx, records)
    plot_tradeoff(rows, run / f"latency_{profile.name}.png",
                  f"{ctx.run_config.get('model', run.name)} on {ctx.device} ({profile.name})")
    print(format_table(rows))
    return 0


class _Context:
    """Everything one profile run shares between models."""

    def __init__(self, run: Path, profile: Profile, backend_cls: type[Backend], eval_data: EvalData,
                 fingerprint: dict[str, Any], models: list[ModelRow], rounds: int = 1) -> None:
        self.run = run
        self.profile = profile
        self.rounds = rounds
        # Each round times a model for its share of the budget (warm-up is repeated per round).
        self.round_timing = dataclasses.replace(
            profile, min_seconds=profile.min_seconds / rounds,
            min_iters=max(1, math.ceil(profile.min_iters / rounds)))
        self.backend_cls = backend_cls
        self.eval = eval_data
        self.fingerprint = fingerprint
        self.models = models
        self.device = short_device_name(fingerprint)
        self.host = fingerprint.get("host", "")
        self.digest = profile.digest()
        self.run_config = read_run_config(run)
        self.json_path = run / f"latency_{profile.name}.json"
        self.csv_path = run / f"latency_{profile.name}.csv"
        self.cache_dir = run / "engines" / profile.name
        self.unavailable: str | None = None  # why the backend cannot run here, if it cannot
        from legr_edge.latency.table import predict_models  # RUN/latency_table_<profile>.json, if any
        self.predicted = predict_models(run, profile.name, models)


def _select(models: list[ModelRow], only: list[str] | None, run: Path) -> list[ModelRow]:
    if only is None:
        return models
    known = {m.name for m in models}
    unknown = [n for n in only if n not in known]
    if unknown:
        raise LegrError(f"--models: {', '.join(unknown)} not in {run / 'flops_table.csv'} "
                        f"(models: {', '.join(m.name for m in models)})")
    return [m for m in models if m.name in only]


def _progress(rows: list[ModelRow]) -> Any:
    from tqdm import tqdm
    return tqdm(rows, desc="profile", unit="model", disable=None, file=sys.stderr)


def _previous_records(ctx: _Context) -> dict[str, dict[str, Any]]:
    """Records of an earlier run with the same profile settings (others are stale)."""
    if not ctx.json_path.is_file():
        return {}
    try:
        data = json.loads(ctx.json_path.read_text(encoding="utf-8"))
        records = {r["name"]: r for r in data["models"]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        log.warning("%s: unreadable (%s); measuring everything again", ctx.json_path, e)
        return {}
    if data.get("profile_sha256") != ctx.digest:
        log.info("%s was measured with other profile settings; measuring again", ctx.json_path.name)
        return {}
    names = {m.name for m in ctx.models}
    return {n: r for n, r in records.items() if n in names}


def _reusable(prev: dict[str, Any] | None, ctx: _Context, row: ModelRow) -> bool:
    if not prev or prev.get("status") != "ok" or prev.get("host") != ctx.host:
        return False
    if prev.get("rounds", 1) != ctx.rounds:
        return False
    if prev.get("profile_sha256") != ctx.digest or row.manifest is None:
        return False
    path = ctx.run / "onnx" / row.manifest.get("file", f"{row.name}.onnx")
    return path.is_file() and sha256_file(path) == prev.get("onnx_sha256")


# ----- one model ----------------------------------------------------------------------
def profile_model(ctx: _Context, row: ModelRow) -> dict[str, Any]:
    """Check, build, verify accuracy, time. Any non-LegrError failure is recorded, not raised."""
    rec: dict[str, Any] = {
        "name": row.name, "status": "failed", "error": "", "batches": [], "warnings": [],
        "profile_sha256": ctx.digest, "host": ctx.host, "device": ctx.device,
        "model_dir": row.path, "measured_at": _now(), "rounds": ctx.rounds,
    }
    backend = None
    try:
        if ctx.unavailable:
            raise RuntimeError(ctx.unavailable)
        onnx_path, digest = check_onnx(ctx.run, row)
        rec.update(onnx_file=str(onnx_path.relative_to(ctx.run)), onnx_sha256=digest)
        spec = _model_spec(ctx, row, onnx_path, digest)
        backend = ctx.backend_cls(spec, ctx.profile)
        with backend:
            rec["deployed_top1"] = deployed_top1(backend, ctx.eval, max(ctx.profile.batch_sizes))
            rec["eval_images"] = len(ctx.eval)
            rec["batches"] = [_time_batch(backend, ctx.round_timing, b, row.name)
                              for b in ctx.profile.batch_sizes]
        rec["status"] = "ok"
    except LegrError:
        raise
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {e}".strip()
        rec["batches"] = []
        log.error("%s: failed: %s", row.name, rec["error"])
        log.debug("%s: traceback", row.name, exc_info=True)
    if backend is not None:
        rec["info"] = backend.info()
        rec["warnings"] = list(backend.warnings)
        if backend.engine_path is not None:
            rec["engine_path"] = _relative(backend.engine_path, ctx.run)
    return rec


def time_again(ctx: _Context, row: ModelRow, rec: dict[str, Any], round_no: int) -> None:
    """One more interleaved timing round for a model measured before; samples are pooled.

    A failure here keeps the earlier rounds and is recorded as a warning.
    """
    try:
        onnx_path = ctx.run / rec["onnx_file"]
        with ctx.backend_cls(_model_spec(ctx, row, onnx_path, rec["onnx_sha256"]), ctx.profile) as backend:
            for b in rec["batches"]:
                more = _time_batch(backend, ctx.round_timing, b["batch_size"], row.name)
                b["samples_ms"].extend(more["samples_ms"])
                b["warmup_iters"] += more["warmup_iters"]
                b["stats"] = TimingStats.from_samples(b["samples_ms"], b["batch_size"]).to_dict()
    except Exception as e:  # keep what the earlier rounds measured
        msg = f"timing round {round_no} failed: {type(e).__name__}: {e}"
        rec["warnings"].append(msg)
        log.warning("%s: %s", row.name, msg)


def _model_spec(ctx: _Context, row: ModelRow, onnx_path: Path, digest: str) -> ModelSpec:
    """ModelSpec from manifest + file; RuntimeError when the model cannot run on this profile."""
    info = inspect_onnx(onnx_path)
    if info.opset > ctx.profile.opset:
        raise RuntimeError(f"model uses ONNX opset {info.opset}, profile {ctx.profile.name} "
                           f"allows at most {ctx.profile.opset}; re-export with that opset")
    m = row.manifest or {}
    shape = tuple(m.get("input_shape") or ())[1:]
    eval_shape = tuple(ctx.eval.batch(0, 1).shape[1:])
    if not shape or not all(isinstance(d, int) for d in shape):
        shape = eval_shape
    if tuple(shape) != eval_shape:
        raise RuntimeError(f"model input {list(shape)} but eval.npz gives {list(eval_shape)}")
    calib = ctx.eval.batch(0, 256) if ctx.profile.precision == "int8" else None
    return ModelSpec(name=row.name, onnx_path=onnx_path, onnx_sha256=digest,
                     input_name=m.get("input_name", info.input_names[0] if info.input_names else "input"),
                     output_name=m.get("output_name", "logits"), input_shape=tuple(shape),
                     model_dir=ctx.run / row.path, cache_dir=ctx.cache_dir, calibration=calib)


def deployed_top1(backend: Backend, data: EvalData, batch: int) -> float:
    """Top-1 (%) of the deployed model on eval.npz; the last batch is zero-padded to ``batch``."""
    correct = 0
    for start in range(0, len(data), batch):
        x = data.batch(start, start + batch)
        n = x.shape[0]
        if n < batch:
            x = np.concatenate([x, np.zeros((batch - n, *x.shape[1:]), np.float32)])
        pred = backend.infer(x)[:n].argmax(axis=1)
        correct += int((pred == data.labels[start:start + n]).sum())
    return 100.0 * correct / len(data)


def _time_batch(backend: Backend, profile: Profile, batch: int, name: str) -> dict[str, Any]:
    backend.prepare(batch)
    m = measure(backend.step, batch_size=batch, warmup_s=profile.warmup_s,
                min_iters=profile.min_iters, min_seconds=profile.min_seconds,
                label=f"{name} batch {batch}")
    # 1e-5 ms = 10 ns, finer than CUDA event resolution (~0.5 us): rounding only shortens the JSON
    return {"batch_size": batch, "stats": m.stats.to_dict(), "source": m.source,
            "warmup_iters": m.warmup_iters, "samples_ms": [round(v, 5) for v in m.samples_ms]}


def summary_line(rec: dict[str, Any], row: ModelRow) -> str:
    if rec["status"] != "ok":
        return f"{rec['name']}: FAILED {rec['error']}"
    parts = [f"{rec['name']}: top-1 {rec['deployed_top1']:.2f}% deployed"
             + (f" ({row.test_top1:.2f}% in table)" if row.test_top1 is not None else "")]
    for b in rec["batches"]:
        s = b["stats"]
        parts.append(f"bs{b['batch_size']} median {s['median']:.3f} ms p99 {s['p99']:.3f} ms "
                     f"{s['throughput_ips']:.0f} img/s cv {s['cv']:.2f}")
    return " | ".join(parts)


# ----- outputs ------------------------------------------------------------------------
def csv_rows(ctx: _Context, records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model and batch size (one row per failed model), in flops-table order."""
    dense = _dense_medians(ctx.models, records)
    rows = []
    for m in ctx.models:
        rec = records.get(m.name)
        if rec is None:
            continue
        base = _base_row(ctx, m, rec)
        if rec["status"] != "ok":
            rows.append(base)
            continue
        for b in rec["batches"]:
            s = b["stats"]
            ref = dense.get(b["batch_size"])
            rows.append({**base, "batch_size": b["batch_size"], "latency_ms_median": s["median"],
                         "latency_ms_mean": s["mean"], "latency_ms_min": s["min"],
                         "latency_ms_p90": s["p90"], "latency_ms_p95": s["p95"],
                         "latency_ms_p99": s["p99"], "latency_ms_std": s["std"],
                         "latency_cv": s["cv"], "n_iters": s["n"],
                         "throughput_ips": s["throughput_ips"], "timing_source": b["source"],
                         "speedup": ref / s["median"] if ref and s["median"] > 0 else None,
                         **_prediction(ctx, m.name, b["batch_size"], s["median"])})
    return rows


def _prediction(ctx: _Context, name: str, batch: int, median: float) -> dict[str, Any]:
    pred = ctx.predicted.get(name)
    if pred is None or pred[0] != batch:
        return {}
    return {"predicted_ms": pred[1], "measured_over_predicted": median / pred[1] if pred[1] > 0 else None}


def _dense_medians(models: list[ModelRow], records: dict[str, dict[str, Any]]) -> dict[int, float]:
    dense = next((m for m in models if m.is_dense), None) or next(
        (m for m in models if m.target == 1.0), None)
    rec = records.get(dense.name) if dense else None
    if not rec or rec.get("status") != "ok":
        log.warning("no successful measurement of the dense model: speedup left empty")
        return {}
    return {b["batch_size"]: b["stats"]["median"] for b in rec["batches"]}


def _base_row(ctx: _Context, m: ModelRow, rec: dict[str, Any]) -> dict[str, Any]:
    info = rec.get("info") or {}
    deployed = rec.get("deployed_top1")
    return {
        "name": m.name, "target": m.target, "macs": m.macs, "macs_ratio": m.macs_ratio,
        "params": m.params, "val_top1": m.val_top1, "test_top1": m.test_top1,
        "deployed_top1": deployed,
        "top1_drop": (m.test_top1 - deployed) if m.test_top1 is not None and deployed is not None else None,
        "backend": ctx.profile.backend, "precision": info.get("precision", ctx.profile.precision),
        "providers": ";".join(info.get("providers") or []), "profile": ctx.profile.name,
        "profile_sha256": ctx.digest[:16], "device": rec.get("device", ctx.device),
        "host": rec.get("host", ""), "onnx_file": rec.get("onnx_file"),
        "onnx_sha256": rec.get("onnx_sha256"), "model_dir": rec.get("model_dir", m.path),
        "engine_path": rec.get("engine_path"), "measured_at": rec.get("measured_at"),
        "status": rec["status"], "error": rec.get("error") or None,
        "warnings": " | ".join(rec.get("warnings") or []) or None,
    }


def _write_results(ctx: _Context, records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    ordered = [records[m.name] for m in ctx.models if m.name in records]
    rows = csv_rows(ctx, records)
    report = {
        "legr_edge_version": __version__, "updated_at": _now(), "run": ctx.run_config,
        "profile": ctx.profile.to_dict(), "profile_sha256": ctx.digest, "device": ctx.device,
        "fingerprint": ctx.fingerprint, "models": ordered,
    }
    # Compact on purpose: a fast GPU gives ~50k samples per batch size, which indented JSON
    # would spread over 50k lines. `python -m json.tool` pretty-prints it for reading.
    write_text(ctx.json_path, json.dumps(report, separators=(",", ":")) + "\n")
    write_csv(ctx.csv_path, rows, CSV_COLUMNS)
    return rows


def _relative(path: Path, run: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(run.resolve()))
    except ValueError:
        return str(path)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


if __name__ == "__main__":
    raise SystemExit(main())
