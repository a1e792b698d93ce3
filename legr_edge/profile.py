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
the same host are skipped unless --force. A measurement counts only when all its
rounds are done: a run interrupted between rounds leaves those models' rows as
status=incomplete (pick ignores them), and the next run measures them again. A model that fails (missing or corrupt
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
import logging
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from legr_edge.cli import EXIT_STATUS, run_cli, setup_logging
from legr_edge.device.backends import Backend, ModelSpec, get_backend
from legr_edge.device.backends.base import BackendUnavailable
from legr_edge.device.fingerprint import collect_fingerprint, short_device_name
from legr_edge.device.onnx_info import inspect_onnx
from legr_edge.device.profiles import Profile, load_profile
from legr_edge.device.report import format_table, plot_tradeoff
from legr_edge.device.cache import previous_records, reusable
from legr_edge.device.results import CSV_COLUMNS, now, summary_line, write_results  # noqa: F401 (pick's schema)
from legr_edge.device.timing import TimingStats, measure
from legr_edge.errors import LegrError
from legr_edge.rundir import (EvalData, ModelRow, check_name, check_onnx, load_eval, load_models,
                              resolve_inside, run_summary)

log = logging.getLogger(__name__)

DEFAULT_ROUNDS = 3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m legr_edge.profile", description=__doc__, epilog=EXIT_STATUS,
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
    p.add_argument("--trust-run-code", action="store_true",
                   help="torch backend only: let a user model factory named in the run's arch.json be "
                        "imported and run (never needed for registered models or ONNX backends)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (TensorRT builder log too)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    def body() -> int:
        from legr_edge.models.registry import trust_scope  # torch-free
        with trust_scope(trust_all=args.trust_run_code):
            return profile_run(args.run, args.profile, force=args.force, only=_split(args.models),
                               rounds=args.rounds)
    return run_cli(body)


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
    _check_writable(run, profile)
    backend_cls = get_backend(profile.backend)
    unavailable = None
    try:
        backend_cls.check_available(profile)
    except BackendUnavailable as e:  # every model is recorded as failed with this reason
        log.error("%s", e)
        unavailable = str(e)
    fingerprint = collect_fingerprint()
    ctx = ProfileContext(run, profile, backend_cls, eval_data, fingerprint, models, rounds)
    ctx.unavailable = unavailable
    records = previous_records(ctx)
    measured = []
    for row in _progress(selected):
        if not force and reusable(records.get(row.name), ctx, row):
            log.info("%s: already measured with this ONNX and profile; skipped (--force re-measures)",
                     row.name)
            continue
        records[row.name] = profile_model(ctx, row)
        measured.append(row)
        write_results(ctx, records)  # after every model: an interrupted run keeps its work
    for round_no in range(2, rounds + 1):
        for row in measured:
            rec = records[row.name]
            if rec["status"] == "ok" and rec["rounds_done"] == round_no - 1:
                time_again(ctx, row, rec, round_no)
        write_results(ctx, records)
    for row in measured:
        log.info("%s", summary_line(records[row.name], row))
    rows = write_results(ctx, records)
    plot_tradeoff(rows, run / f"latency_{profile.name}.png",
                  f"{ctx.run_config.get('model', run.name)} on {ctx.device} ({profile.name})")
    print(format_table(rows))
    return 0


def _check_writable(run: Path, profile: Profile) -> None:
    """Results go into RUN (and engines into RUN/engines/<profile>, which must stay inside it)."""
    import os
    if not os.access(run, os.W_OK | os.X_OK):
        raise LegrError(f"{run}: not writable; profile writes latency_{profile.name}.csv/.json there "
                        "(copy the run to a writable place)")
    resolve_inside(run, f"engines/{profile.name}", str(run))


class ProfileContext:
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
        self.run_config = run_summary(run)
        self.json_path = run / f"latency_{profile.name}.json"
        self.csv_path = run / f"latency_{profile.name}.csv"
        self.cache_dir = run / "engines" / profile.name
        self.unavailable: str | None = None  # why the backend cannot run here, if it cannot
        from legr_edge.latency.table import predict_models  # RUN/latency_table_<profile>.json, if any
        self.predicted = predict_models(run, profile.name, models)


def _select(models: list[ModelRow], only: list[str] | None, run: Path) -> list[ModelRow]:
    if only is None:
        return models
    for n in only:
        check_name(n, "--models")
    known = {m.name for m in models}
    unknown = [n for n in only if n not in known]
    if unknown:
        raise LegrError(f"--models: {', '.join(unknown)} not in {run / 'flops_table.csv'} "
                        f"(models: {', '.join(m.name for m in models)})")
    return [m for m in models if m.name in only]


def _progress(rows: list[ModelRow]) -> Any:
    from tqdm import tqdm
    return tqdm(rows, desc="profile", unit="model", disable=None, file=sys.stderr)


# ----- one model ----------------------------------------------------------------------
def profile_model(ctx: ProfileContext, row: ModelRow) -> dict[str, Any]:
    """Check, build, verify accuracy, time. Any non-LegrError failure is recorded, not raised."""
    rec: dict[str, Any] = {
        "name": row.name, "status": "failed", "error": "", "batches": [], "warnings": [],
        "profile_sha256": ctx.digest, "host": ctx.host, "device": ctx.device,
        "model_dir": row.path, "measured_at": now(), "rounds": ctx.rounds,
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
        rec["status"], rec["rounds_done"] = "ok", 1
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


def time_again(ctx: ProfileContext, row: ModelRow, rec: dict[str, Any], round_no: int) -> None:
    """One more interleaved timing round for a model measured before; samples are pooled.

    A failure here keeps the earlier rounds, records a warning and leaves the model
    incomplete (its rows say so; the next profile run measures it again).
    """
    try:
        onnx_path = resolve_inside(ctx.run, rec["onnx_file"], "onnx file")
        with ctx.backend_cls(_model_spec(ctx, row, onnx_path, rec["onnx_sha256"]), ctx.profile) as backend:
            for b in rec["batches"]:
                more = _time_batch(backend, ctx.round_timing, b["batch_size"], row.name)
                b["samples_ms"].extend(more["samples_ms"])
                b["warmup_iters"] += more["warmup_iters"]
                b["stats"] = TimingStats.from_samples(b["samples_ms"], b["batch_size"]).to_dict()
        rec["rounds_done"] = round_no
    except Exception as e:  # keep what the earlier rounds measured (the record stays incomplete)
        msg = f"timing round {round_no} failed: {type(e).__name__}: {e}"
        rec["warnings"].append(msg)
        log.warning("%s: %s", row.name, msg)


def _model_spec(ctx: ProfileContext, row: ModelRow, onnx_path: Path, digest: str) -> ModelSpec:
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
                     model_dir=resolve_inside(ctx.run, row.path, "flops_table.csv path"), cache_dir=ctx.cache_dir, calibration=calib)


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


def _relative(path: Path, run: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(run.resolve()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    raise SystemExit(main())
