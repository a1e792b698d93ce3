"""What profile writes: the latency CSV schema (pick reads it), its rows, the JSON report.

A model's record holds ``rounds`` (asked for) and ``rounds_done`` (timed so far);
its rows say ``status=ok`` only when every round is done. Rows of a model whose run
was interrupted between rounds say ``incomplete`` (pick ignores them and the next
profile run measures the model again).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from typing import TYPE_CHECKING, Any, Dict, List

from legr_edge import __version__
from legr_edge.io import write_csv, write_text
from legr_edge.rundir import ModelRow

if TYPE_CHECKING:  # pragma: no cover
    from legr_edge.profile import ProfileContext

log = logging.getLogger(__name__)

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
INCOMPLETE = "incomplete"


def is_complete(rec: Dict[str, Any]) -> bool:
    """A measurement counts only when all its timing rounds are done."""
    rounds = rec.get("rounds", 1)
    return rec.get("status") == "ok" and isinstance(rounds, int) and rec.get("rounds_done", 0) >= rounds


def row_status(rec: Dict[str, Any]) -> str:
    if rec.get("status") == "ok" and not is_complete(rec):
        return INCOMPLETE
    return rec["status"]


def csv_rows(ctx: "ProfileContext", records: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
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


def _prediction(ctx: "ProfileContext", name: str, batch: int, median: float) -> Dict[str, Any]:
    pred = ctx.predicted.get(name)
    if pred is None or pred[0] != batch:
        return {}
    return {"predicted_ms": pred[1], "measured_over_predicted": median / pred[1] if pred[1] > 0 else None}


def _dense_medians(models: List[ModelRow], records: Dict[str, Dict[str, Any]]) -> Dict[int, float]:
    dense = next((m for m in models if m.is_dense), None) or next(
        (m for m in models if m.target == 1.0), None)
    rec = records.get(dense.name) if dense else None
    if not rec or rec.get("status") != "ok":
        log.warning("no successful measurement of the dense model: speedup left empty")
        return {}
    return {b["batch_size"]: b["stats"]["median"] for b in rec["batches"]}


def _base_row(ctx: "ProfileContext", m: ModelRow, rec: Dict[str, Any]) -> Dict[str, Any]:
    info = rec.get("info") or {}
    deployed = rec.get("deployed_top1")
    warnings = list(rec.get("warnings") or [])
    if row_status(rec) == INCOMPLETE:
        warnings.insert(0, f"timed {rec.get('rounds_done', 0)} of {rec.get('rounds')} rounds "
                           "(interrupted or a round failed); profile again to measure it fully")
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
        "status": row_status(rec), "error": rec.get("error") or None,
        "warnings": " | ".join(warnings) or None,
    }


def write_results(ctx: "ProfileContext", records: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """latency_<profile>.json (raw samples, fingerprint) and .csv, each replaced atomically."""
    ordered = [records[m.name] for m in ctx.models if m.name in records]
    rows = csv_rows(ctx, records)
    report = {
        "legr_edge_version": __version__, "updated_at": now(), "run": ctx.run_config,
        "profile": ctx.profile.to_dict(), "profile_sha256": ctx.digest, "device": ctx.device,
        "fingerprint": ctx.fingerprint, "models": ordered,
    }
    # Compact on purpose: a fast GPU gives ~50k samples per batch size, which indented JSON
    # would spread over 50k lines. `python -m json.tool` pretty-prints it for reading.
    write_text(ctx.json_path, json.dumps(report, separators=(",", ":")) + "\n")
    write_csv(ctx.csv_path, rows, CSV_COLUMNS)
    return rows


def summary_line(rec: Dict[str, Any], row: ModelRow) -> str:
    if rec["status"] != "ok":
        return f"{rec['name']}: FAILED {rec['error']}"
    parts = [f"{rec['name']}: top-1 {rec['deployed_top1']:.2f}% deployed"
             + (f" ({row.test_top1:.2f}% in table)" if row.test_top1 is not None else "")]
    for b in rec["batches"]:
        s = b["stats"]
        parts.append(f"bs{b['batch_size']} median {s['median']:.3f} ms p99 {s['p99']:.3f} ms "
                     f"{s['throughput_ips']:.0f} img/s cv {s['cv']:.2f}")
    if not is_complete(rec):
        parts.append(f"INCOMPLETE ({rec.get('rounds_done', 0)} of {rec.get('rounds')} rounds)")
    return " | ".join(parts)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
