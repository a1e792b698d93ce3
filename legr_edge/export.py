"""Export every model of a search run to ONNX, check it, and package the eval data.

Examples:

    python -m legr_edge.export runs/resnet20-digits                    # opset 18
    python -m legr_edge.export runs/resnet20-digits --profile profiles/jetson-xavier-nx.toml   # its opset (17)
    python -m legr_edge.export runs/resnet20-digits --opset 17

Writes RUN/onnx/<name>.onnx (BatchNorm folded, dynamic batch, one file each),
RUN/onnx/manifest.json (name, sha256, opset, input/output names and shape, parity
error against torch) and RUN/data/eval.npz (the test split as uint8 + labels +
normalization) so the device can measure deployed accuracy without torch.

Opset: torch's dynamo exporter writes opset 18 or newer only (asked for less, it
silently writes 18), while TensorRT 8.5/8.6 on older Jetsons parses 17 at most. So
opsets below 18 go through the TorchScript exporter, 18 and above through dynamo,
and the opset actually written is checked.
"""
from __future__ import annotations

import argparse
import contextlib
import io as _io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from legr_edge import io
from legr_edge.cli import run_cli, setup_logging
from legr_edge.errors import LegrError

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
EVAL_LIMIT = 10000
PARITY_SAMPLES = 256
PARITY_WARN = 1e-3
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_run(run: str | Path, opset: int | None = None, profile: str | None = None,
               eval_limit: int = EVAL_LIMIT) -> dict[str, Any]:
    """Export all models in RUN/flops_table.csv; returns the manifest."""
    run = Path(run)
    rows = _flops_rows(run)
    opset = _choose_opset(opset, profile)
    images, labels, meta = write_eval_data(run, eval_limit)
    entries = []
    for row in rows:
        entries.append(_export_one(run, row, opset, images[:PARITY_SAMPLES], meta))
    manifest = {"format": "legr_edge.onnx_manifest/1", "opset": opset, "models": entries}
    io.write_json(run / "onnx" / "manifest.json", manifest)
    failed = [e["name"] for e in entries if e["status"] != "ok"]
    log.info("exported %d models to %s (opset %d)%s", len(entries) - len(failed), run / "onnx", opset,
             f"; failed: {', '.join(failed)}" if failed else "")
    return manifest


def _flops_rows(run: Path) -> list[dict[str, str]]:
    table = run / "flops_table.csv"
    if not table.is_file():
        raise LegrError(f"{table}: not found (is {run} a finished search run?)")
    rows = io.read_csv(table)
    missing = {"name", "path"} - set(rows[0] if rows else {})
    if not rows or missing:
        raise LegrError(f"{table}: no rows or missing columns {sorted(missing)}")
    return rows


def _choose_opset(opset: int | None, profile: str | None) -> int:
    if opset is None and profile:
        from legr_edge.device.profiles import load_profile
        opset = load_profile(profile).opset
    opset = DEFAULT_OPSET if opset is None else opset
    if not 11 <= opset <= 23:
        raise LegrError(f"--opset must be between 11 and 23, got {opset}")
    return opset


def write_eval_data(run: Path, limit: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The test split as uint8 NHWC + labels + mean/std, for deployed-accuracy checks."""
    from legr_edge.data import load_dataset
    from legr_edge.models.arch import read_arch

    dense = read_arch(run / "models" / "dense")
    config = json.loads((run / "config.json").read_text())
    size = tuple(dense["input_size"][1:]) if config["dataset"] == "imagefolder" else None
    bundle = load_dataset(config["dataset"], config.get("data_dir"), val_fraction=config["val_fraction"],
                          seed=0, image_size=size)
    n = min(len(bundle.test), limit)
    images, labels = bundle.test.get(np.arange(n))
    meta = {"mean": np.asarray(dense["mean"], np.float32), "std": np.asarray(dense["std"], np.float32)}
    with io.atomic_path(run / "data" / "eval.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, images=images, labels=labels.astype(np.int64), **meta)
    log.info("eval data: %d test images -> %s", n, run / "data" / "eval.npz")
    return images, labels, meta


def _export_one(run: Path, row: dict[str, str], opset: int, images: np.ndarray,
                meta: dict[str, Any]) -> dict[str, Any]:
    name = row["name"]
    entry: dict[str, Any] = {"name": name, "file": f"{name}.onnx", "opset": opset,
                             "input_name": INPUT_NAME, "output_name": OUTPUT_NAME}
    try:
        entry.update(export_model(run / row["path"], run / "onnx" / f"{name}.onnx", opset, images, meta))
        entry["status"], entry["error"] = "ok", ""
    except Exception as e:  # one bad model must not stop the others
        log.error("%s: export failed: %s: %s", name, type(e).__name__, e)
        entry.update(status="failed", error=f"{type(e).__name__}: {e}")
    return entry


def export_model(model_dir: Path, dest: Path, opset: int, images: np.ndarray,
                 meta: dict[str, Any]) -> dict[str, Any]:
    """Export one saved model; check it fully; measure ORT-vs-torch parity."""
    import onnx
    import torch
    from legr_edge.models.arch import load_model

    model = fold_batchnorm(load_model(model_dir))
    x = torch.from_numpy(normalize(images, meta["mean"], meta["std"]))
    with io.atomic_path(dest) as tmp:
        _torch_export(model, _example_batch(x), tmp, opset)
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto, full_check=True)
        written = _written_opset(proto)
        if written != opset:
            raise LegrError(f"{dest.name}: asked for opset {opset}, the exporter wrote {written}")
        err = _parity(tmp, model, x)
    if err > PARITY_WARN:
        log.warning("%s: ONNX Runtime differs from torch by %.2e (max abs)", dest.name, err)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    bn_left = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
    return {"sha256": io.sha256_file(dest), "input_shape": dims, "parity_max_abs_err": err,
            "parity_samples": int(len(x)), "batchnorm_nodes": bn_left, "bytes": dest.stat().st_size}


def normalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, as the device side does it."""
    x = (images.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def fold_batchnorm(model):
    """Fold every BatchNorm that directly and solely follows a conv into that conv.

    Uses torch.fx to see the graph; a model fx cannot trace is exported unfolded
    (ONNX Runtime and TensorRT fold BatchNorm themselves at build time).
    """
    import torch.fx
    import torch.nn as nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:
        log.debug("fx cannot trace the model (%s); BatchNorm left unfolded", e)
        return model
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
                and isinstance(modules.get(src.target), nn.Conv2d)):
            fused = fuse_conv_bn_eval(modules[src.target], modules[node.target])
            _set_submodule(gm, src.target, fused)
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()


def _set_submodule(root, target: str, module) -> None:
    parent_name, _, attr = target.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, module)


def _torch_export(model, example, path: Path, opset: int) -> None:
    import torch

    # At every export torch.onnx warns that torchvision's ops are not registered; importing
    # torch resets its loggers' levels, so this is set here rather than in setup_logging.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

    quiet = contextlib.redirect_stdout(_io.StringIO())
    with warnings.catch_warnings(), quiet:
        warnings.simplefilter("ignore")
        if opset >= 18:
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(model, (example,), str(path), opset_version=opset, dynamo=True,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: batch},), external_data=False)
        else:
            torch.onnx.export(model, (example,), str(path), opset_version=opset, dynamo=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def _example_batch(x):
    """Two images: torch.export specializes size-1 dimensions, which breaks a dynamic batch."""
    return x[:2] if len(x) >= 2 else x[:1].repeat(2, *([1] * (x.dim() - 1)))


def _written_opset(proto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _parity(path: Path, model, x) -> float:
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    return float(np.max(np.abs(got - want)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m legr_edge.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory written by python -m legr_edge.search")
    p.add_argument("--profile", help="device profile TOML whose opset is used")
    p.add_argument("--opset", type=int, help=f"ONNX opset (default: the profile's, else {DEFAULT_OPSET})")
    p.add_argument("--eval-limit", type=int, default=EVAL_LIMIT, help="at most this many test images in eval.npz")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        manifest = export_run(args.run, args.opset, args.profile, args.eval_limit)
        return 0 if any(m["status"] == "ok" for m in manifest["models"]) else 1
    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
