"""Pareto fronts, the printed table and the accuracy-vs-cost plot."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)


def pareto_front(costs: Sequence[float], accs: Sequence[float]) -> list[bool]:
    """True where no other point is at least as cheap and as accurate, and better in one."""
    pts = list(zip(costs, accs))
    out = []
    for i, (c, a) in enumerate(pts):
        dominated = any((c2 <= c and a2 >= a) and (c2 < c or a2 > a)
                        for j, (c2, a2) in enumerate(pts) if j != i)
        out.append(not dominated)
    return out


def _fmt(v: Any, spec: str) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return "-" if math.isnan(v) else format(v, spec)
    return str(v)


TABLE_COLUMNS = (("name", "name", "s"), ("batch_size", "bs", "s"), ("macs_ratio", "macs", ".3f"),
                 ("test_top1", "test%", ".2f"), ("deployed_top1", "deploy%", ".2f"),
                 ("latency_ms_median", "med ms", ".3f"), ("predicted_ms", "pred ms", ".3f"),
                 ("latency_ms_p99", "p99 ms", ".3f"),
                 ("throughput_ips", "img/s", ".0f"), ("speedup", "speedup", ".2f"),
                 ("status", "status", "s"))


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Fixed-width text table of the latency rows (errors listed below it)."""
    cells = [[h for _, h, _ in TABLE_COLUMNS]]
    for r in rows:
        cells.append([_fmt(r.get(k), spec) for k, _, spec in TABLE_COLUMNS])
    widths = [max(len(row[i]) for row in cells) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    errors = [f"  {r['name']}: {r['error']}" for r in rows if r.get("status") != "ok" and r.get("error")]
    if errors:
        lines += ["", "failed:"] + errors
    return "\n".join(lines)


def plot_tradeoff(rows: Sequence[dict[str, Any]], path: Path, title: str) -> bool:
    """top-1 vs MACs and top-1 vs measured median latency, Pareto front marked on both.

    Uses the smallest batch size. Returns False (and logs) when nothing can be plotted.
    """
    ok = [r for r in rows if r.get("status") == "ok" and r.get("latency_ms_median") is not None]
    if not ok:
        log.warning("no successful measurements: %s not written", path)
        return False
    bs = min(r["batch_size"] for r in ok)
    ok = [r for r in ok if r["batch_size"] == bs]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    acc = [r["deployed_top1"] if r.get("deployed_top1") is not None else r.get("test_top1")
           for r in ok]
    for ax, key, label in ((axes[0], "macs", "MACs"),
                           (axes[1], "latency_ms_median", f"median latency (ms), batch {bs}")):
        _scatter_front(ax, [r.get(key) for r in ok], acc, [r["name"] for r in ok], label)
    fig.suptitle(title)
    fig.tight_layout()
    from legr_edge.io import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return True


def _scatter_front(ax: Any, xs: list, ys: list, names: list[str], xlabel: str) -> None:
    pts = [(x, y, n) for x, y, n in zip(xs, ys, names) if x is not None and y is not None]
    if not pts:
        ax.set_visible(False)
        return
    x, y, n = zip(*pts)
    front = pareto_front(x, y)
    ax.scatter(x, y, c="tab:gray", label="model")
    fx, fy = zip(*sorted((a, b) for a, b, f in zip(x, y, front) if f))
    ax.plot(fx, fy, "o-", c="tab:red", label="Pareto front")
    for a, b, name in zip(x, y, n):
        ax.annotate(name, (a, b), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
