"""Export every model of a search run to ONNX, check it, and package the eval data.

Examples:

    python -m legr_edge.export runs/resnet20-digits                    # opset 18
    python -m legr_edge.export runs/resnet20-digits --profile profiles/jetson-xavier-nx.toml   # its opset (17)
    python -m legr_edge.export runs/resnet20-digits --opset 17
    # a run of your own model (package.module:factory): trust that factory explicitly
    python -m legr_edge.export runs/mynet-imagefolder --model mypkg.nets:make_net

Writes RUN/onnx/<name>.onnx (BatchNorm folded, dynamic batch, one file each),
RUN/onnx/manifest.json (name, sha256, opset, input/output names and shape, parity
error against torch) and RUN/data/eval.npz (the test split as uint8 + labels +
normalization) so the device can measure deployed accuracy without torch.

Everything is checked first and written into a staging folder inside RUN, which
replaces onnx/ and data/eval.npz only at the end: a failed export (bad input, or no
model exported) leaves the previous ones as they were. A model that fails while
others succeed is recorded as failed in the manifest.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from legr_edge import io
from legr_edge.cli import EXIT_STATUS, run_cli, setup_logging
from legr_edge.errors import LegrError
from legr_edge.rundir import (EVAL_DATA, MANIFEST_FORMAT, EvalData, read_flops_table, resolve_inside,
                              write_eval)
# Re-exported: the pieces of an export live in their own modules.
from legr_edge.fold import fold_batchnorm  # noqa: F401
from legr_edge.onnx_export import INPUT_NAME, OUTPUT_NAME, export_model
from legr_edge.rundir import normalize  # noqa: F401

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
EVAL_LIMIT = 10000
PARITY_SAMPLES = 256


def export_run(run: str | Path, opset: int | None = None, profile: str | None = None,
               eval_limit: int = EVAL_LIMIT) -> dict[str, Any]:
    """Export all models in RUN/flops_table.csv; returns the manifest.

    LegrError (nothing changed in RUN) on bad input or when no model could be exported.
    """
    import torch  # noqa: F401 -- first: without torch nothing here can run (run_cli names the install)

    from legr_edge.data.evalset import make_eval_data

    run = Path(run)
    rows = read_flops_table(run)
    opset = _choose_opset(opset, profile)
    dirs = {r["name"]: resolve_inside(run, r.get("path") or f"models/{r['name']}",
                                      f"{run / 'flops_table.csv'} model {r['name']}") for r in rows}
    onnx_dir = resolve_inside(run, "onnx", str(run))
    eval_path = resolve_inside(run, EVAL_DATA, str(run))
    eval_data = make_eval_data(run, eval_limit)
    stage = Path(tempfile.mkdtemp(prefix=".export-", dir=run))
    try:
        entries = [_export_one(dirs[r["name"]], stage / "onnx", r["name"], opset, eval_data)
                   for r in rows]
        failed = [e for e in entries if e["status"] != "ok"]
        if len(failed) == len(entries):
            raise LegrError(f"no model of {run} could be exported ({failed[0]['name']}: "
                            f"{failed[0]['error']}); {onnx_dir} and {eval_path} left as they were")
        manifest = {"format": MANIFEST_FORMAT, "opset": opset, "models": entries}
        io.write_json(stage / "onnx" / "manifest.json", manifest)
        write_eval(stage / "eval.npz", eval_data)
        _swap_in(stage, onnx_dir, eval_path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("exported %d models to %s (opset %d)%s", len(entries) - len(failed), onnx_dir, opset,
             f"; failed: {', '.join(e['name'] for e in failed)}" if failed else "")
    return manifest


def _swap_in(stage: Path, onnx_dir: Path, eval_path: Path) -> None:
    """Replace onnx/ by the staged one (the old one kept until the new one is in place)."""
    old = stage / "onnx.old"
    if onnx_dir.exists() or onnx_dir.is_symlink():
        os.replace(onnx_dir, old)
    try:
        os.replace(stage / "onnx", onnx_dir)
        eval_path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / "eval.npz", eval_path)
    except OSError:
        if old.exists() or old.is_symlink():
            if onnx_dir.exists():
                shutil.rmtree(onnx_dir, ignore_errors=True)
            os.replace(old, onnx_dir)
        raise


def _choose_opset(opset: int | None, profile: str | None) -> int:
    if opset is None and profile:
        from legr_edge.device.profiles import load_profile
        opset = load_profile(profile).opset
    opset = DEFAULT_OPSET if opset is None else opset
    if not 11 <= opset <= 23:
        raise LegrError(f"--opset must be between 11 and 23, got {opset}")
    return opset


def _export_one(model_dir: Path, out_dir: Path, name: str, opset: int,
                eval_data: EvalData) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "file": f"{name}.onnx", "opset": opset,
                             "input_name": INPUT_NAME, "output_name": OUTPUT_NAME}
    meta = {"mean": eval_data.mean, "std": eval_data.std}
    try:
        entry.update(export_model(model_dir, out_dir / f"{name}.onnx", opset,
                                  eval_data.images[:PARITY_SAMPLES], meta))
        entry["status"], entry["error"] = "ok", ""
    except Exception as e:  # one bad model must not stop the others
        msg = " ".join(f"{type(e).__name__}: {e}".split())
        log.warning("%s: export failed: %s", name, msg)  # recorded in the manifest; others go on
        entry.update(status="failed", error=msg)
    return entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m legr_edge.export", description=__doc__, epilog=EXIT_STATUS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory written by python -m legr_edge.search")
    p.add_argument("--profile", help="device profile TOML whose opset is used")
    p.add_argument("--opset", type=int, help=f"ONNX opset (default: the profile's, else {DEFAULT_OPSET})")
    p.add_argument("--eval-limit", type=int, default=EVAL_LIMIT, help="at most this many test images in eval.npz")
    p.add_argument("--model", action="append", default=[], metavar="PKG.MODULE:FACTORY",
                   help="trust this user model factory recorded in the run's arch.json (repeatable)")
    p.add_argument("--trust-run-code", action="store_true",
                   help="trust every user model factory the run names (imports and runs that code)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        from legr_edge.models.registry import trust_scope
        with trust_scope(args.model, args.trust_run_code):
            export_run(args.run, args.opset, args.profile, args.eval_limit)
        return 0
    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
