"""Which earlier measurements profile may keep instead of measuring again.

The earlier latency_<profile>.json is input from disk like any other: a record is
kept only if it is complete (every timing round done), was made on this host with
the same profile settings and the same ONNX sha256, and its numbers are sane.
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Dict, Optional

from legr_edge.device.results import is_complete
from legr_edge.errors import LegrError
from legr_edge.io import sha256_file
from legr_edge.rundir import ModelRow, read_json_object, resolve_inside

if TYPE_CHECKING:  # pragma: no cover
    from legr_edge.profile import ProfileContext

log = logging.getLogger(__name__)

STAT_KEYS = ("median", "mean", "min", "p90", "p95", "p99", "std", "cv", "throughput_ips")


def previous_records(ctx: "ProfileContext") -> Dict[str, Dict[str, Any]]:
    """Records of an earlier run with the same profile settings (others are stale)."""
    if not ctx.json_path.is_file():
        return {}
    try:
        data = read_json_object(ctx.json_path, "earlier measurements")
        records = {r["name"]: r for r in data["models"] if isinstance(r, dict)}
    except (LegrError, KeyError, TypeError) as e:
        log.warning("%s: unusable (%s); measuring everything again", ctx.json_path, e)
        return {}
    if data.get("profile_sha256") != ctx.digest:
        log.info("%s was measured with other profile settings; measuring again", ctx.json_path.name)
        return {}
    names = {m.name for m in ctx.models}
    return {n: r for n, r in records.items() if n in names}


def reusable(prev: Optional[Dict[str, Any]], ctx: "ProfileContext", row: ModelRow) -> bool:
    if not prev or not is_complete(prev) or prev.get("host") != ctx.host:
        return False
    if prev.get("rounds") != ctx.rounds or prev.get("profile_sha256") != ctx.digest:
        return False
    if row.manifest is None or not _sane(prev, ctx):
        return False
    try:
        path = resolve_inside(ctx.run, f"onnx/{row.manifest.get('file', row.name + '.onnx')}", "manifest")
    except LegrError:
        return False
    return path.is_file() and sha256_file(path) == prev.get("onnx_sha256")


def _sane(rec: Dict[str, Any], ctx: "ProfileContext") -> bool:
    """Finite non-negative statistics for exactly the profile's batch sizes; top-1 in [0, 100]."""
    try:
        top1 = float(rec["deployed_top1"])
        batches = rec["batches"]
        sizes = [b["batch_size"] for b in batches]
        stats_ok = all(math.isfinite(float(b["stats"][k])) and float(b["stats"][k]) >= 0
                       for b in batches for k in STAT_KEYS)
    except (KeyError, TypeError, ValueError):
        return False
    return (math.isfinite(top1) and 0 <= top1 <= 100 and stats_ok
            and sorted(sizes) == sorted(ctx.profile.batch_sizes))
