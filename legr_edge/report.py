"""Result tables and plots of the workstation half (CSV for programs, text and PNG for people)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from legr_edge import io
from legr_edge.rundir import FLOPS_COLUMNS, FLOPS_TABLE  # the one definition of the table

log = logging.getLogger(__name__)

# rows in arrival (completion) order; worker: "local", or the Ray worker that evaluated it
SEARCH_LOG_COLUMNS = ("index", "fitness", "val_top1", "val_loss", "macs", "macs_ratio", "seconds", "worker")


def write_flops_table(run: Path, rows: Sequence[dict[str, Any]]) -> None:
    io.write_csv(run / FLOPS_TABLE, rows, FLOPS_COLUMNS)


def format_flops_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table for the terminal (MACs at batch 1; FLOPs = 2 x MACs)."""
    head = f"{'name':<12} {'target':>6} {'MMACs':>9} {'ratio':>6} {'params':>9} {'val top1':>9} {'test top1':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['name']:<12} {r['target']:>6.2f} {r['macs'] / 1e6:>9.2f} {r['macs_ratio']:>6.3f} "
                     f"{r['params']:>9d} {r['val_top1']:>9.2f} {r['test_top1']:>9.2f}")
    lines.append("MACs: multiply-accumulates of conv + linear layers at batch 1 (FLOPs = 2 x MACs)")
    return "\n".join(lines)


def plot_tradeoff(run: Path, rows: Sequence[dict[str, Any]], title: str) -> None:
    """``tradeoff_flops.png``: test and validation top-1 against MACs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["macs"])
    macs = [r["macs"] / 1e6 for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(macs, [r["test_top1"] for r in rows], "o-", label="test top-1")
    ax.plot(macs, [r["val_top1"] for r in rows], "s--", alpha=0.6, label="validation top-1")
    for r, x in zip(rows, macs):
        ax.annotate(r["name"], (x, r["test_top1"]), fontsize=7, xytext=(3, -10), textcoords="offset points")
    ax.set_xlabel("MMACs (batch 1; FLOPs = 2 x MACs)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with io.atomic_path(run / "tradeoff_flops.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
