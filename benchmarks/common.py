"""What every benchmark shares: run metadata, result files, RESULTS.md sections, plots.

A benchmark calls :func:`start` once (logging, the run's metadata: date, exact
command line, machine fingerprint), measures, then :func:`write_results` (CSV +
JSON under ``--out``, atomically) and :func:`update_results_md` (replaces its own
section of ``benchmarks/RESULTS.md``, or appends it). Quick and full runs write
different sections, so a quick try never overwrites the full numbers.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import re
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from legr_edge import io
from legr_edge.device.fingerprint import collect_fingerprint, short_device_name

log = logging.getLogger("benchmarks")

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_MD = BENCH_DIR / "RESULTS.md"
RESULTS_HEADER = ("# legr_edge benchmarks: results\n\n"
                  "Each section is written by the script named in it (see benchmarks/README.md); "
                  "a rerun replaces its own section. Ratios and differences in a table were all "
                  "measured in the same run.\n")


@dataclasses.dataclass(frozen=True)
class RunMeta:
    name: str            # benchmark name, e.g. "ranking_quality"
    quick: bool
    command: str         # the exact command line
    date: str            # UTC, ISO 8601
    fingerprint: dict[str, Any]
    variant: str = ""    # e.g. "learned ranking": its own section and result folder

    @property
    def section(self) -> str:
        mode = "quick" if self.quick else "full"
        return f"{self.name} ({mode}{', ' + self.variant if self.variant else ''})"

    @property
    def device(self) -> str:
        return short_device_name(self.fingerprint)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("onnx_ir", "onnxscript", "matplotlib", "legr_edge.data"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # torchvision ops not registered, at every export


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed from the repository root: ``python -m benchmarks.x ARGS``."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else Path("?")
    head = (f"python -m benchmarks.{script.stem}" if script.parent == BENCH_DIR
            else f"python {shlex.quote(argv[0])}")
    return " ".join([head, *(shlex.quote(a) for a in argv[1:])])


def start(name: str, quick: bool, verbose: bool = False, variant: str = "") -> RunMeta:
    """Set up logging and collect the run's metadata (fingerprint takes ~1 s)."""
    setup_logging(verbose)
    meta = RunMeta(name=name, quick=quick, command=command_line(), date=now(),
                   fingerprint=collect_fingerprint(), variant=variant)
    log.info("%s: %s on %s", meta.section, meta.command, meta.device)
    return meta


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def default_out(name: str, quick: bool, variant: str = "") -> Path:
    """``benchmarks/results/<name>/`` (full) or ``.../<name>/quick/``; a variant gets a subfolder."""
    base = BENCH_DIR / "results" / name
    base = base / "quick" if quick else base
    return base / variant.replace(" ", "_") if variant else base


def set_threads(n: int | None) -> None:
    """Pin torch's intra-op threads (``None``: leave torch's default)."""
    if n:
        import torch
        torch.set_num_threads(n)


# ----- result files -------------------------------------------------------------

def write_results(out: Path, meta: RunMeta, rows: Sequence[Mapping[str, Any]],
                  columns: Sequence[str], settings: Mapping[str, Any],
                  summary: Mapping[str, Any], csv_name: str = "results.csv",
                  extra_csvs: Mapping[str, tuple[Sequence[Mapping[str, Any]], Sequence[str]]] = ()) -> None:
    """``results.csv`` (one row per measurement) + ``results.json`` (meta, settings, rows, summary)."""
    out.mkdir(parents=True, exist_ok=True)
    io.write_csv(out / csv_name, rows, columns)
    for name, (more_rows, more_cols) in dict(extra_csvs).items():
        io.write_csv(out / name, more_rows, more_cols)
    io.write_json(out / "results.json", {"meta": meta.to_dict(), "settings": dict(settings),
                                         "summary": dict(summary), "rows": list(rows)})
    log.info("results: %s", out)


def update_results_md(meta: RunMeta, body: str, path: Path = RESULTS_MD) -> None:
    """Replace (or append) this run's section of RESULTS.md, atomically."""
    text = path.read_text() if path.exists() else RESULTS_HEADER
    block = render_section(meta, body)
    text = replace_section(text, meta.section, block)
    io.write_text(path, text)
    log.info("updated section %r of %s", meta.section, path)


def render_section(meta: RunMeta, body: str) -> str:
    fp = meta.fingerprint
    libs = fp.get("libraries", {})
    lib_text = ", ".join(f"{k} {v}" for k, v in sorted(libs.items()))
    return (f"## {meta.section}\n\n"
            f"- command: `{meta.command}`\n"
            f"- date: {meta.date}\n"
            f"- machine: {meta.device}; {fp.get('cpu_affinity', fp.get('cpu_cores', '?'))} usable cores "
            f"of {fp.get('cpu_cores', '?')}; {fp.get('mem_total_mib', '?')} MiB; {fp.get('os', '?')}; "
            f"Python {fp.get('python', '?')}\n"
            f"- libraries: {lib_text}\n\n"
            f"{body.strip()}\n")


def replace_section(text: str, key: str, block: str) -> str:
    """Put ``block`` between markers for ``key`` in ``text``, replacing an older one."""
    begin, end = f"<!-- BEGIN {key} -->", f"<!-- END {key} -->"
    wrapped = f"{begin}\n{block.rstrip()}\n{end}\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: wrapped, text, count=1)
    return text.rstrip("\n") + "\n\n" + wrapped


def md_table(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    """A GitHub markdown table; floats are given already formatted by the caller."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    """A fixed-width table for the terminal."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    lines = [fmt.format(*header), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    return "\n".join(lines + [fmt.format(*r) for r in rows])


def in_benchmarks(path: Path) -> bool:
    """Whether ``path`` lies below benchmarks/ (a result folder RESULTS.md may link to)."""
    return Path(path).resolve().is_relative_to(BENCH_DIR)


def rel(path: Path) -> str:
    """``path`` relative to benchmarks/ (for links in RESULTS.md) when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(BENCH_DIR))
    except ValueError:
        return str(path)


# ----- statistics ---------------------------------------------------------------

def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (0 for a single value)."""
    values = [float(v) for v in values]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# ----- plots --------------------------------------------------------------------

def pyplot():
    """matplotlib.pyplot with the file-only Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path) -> None:
    """Save a figure as PNG atomically and close it."""
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    pyplot().close(fig)
    log.info("plot: %s", path)


def env_summary() -> str:
    """Thread settings that change timings, for the logs."""
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    return ", ".join(f"{k}={os.environ[k]}" for k in keys if k in os.environ) or "default threads"
