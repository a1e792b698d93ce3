"""Build a tiny run directory (the workstation half's output contract) without torch.

Three conv nets of different widths ("dense" widest, so slowest), exported with
onnx.helper, plus flops_table.csv, onnx/manifest.json, data/eval.npz and
config.json. ``numpy_forward`` is the reference the backends are checked against.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from legr_edge.io import sha256_file

HW = 16
CLASSES = 10
WIDTHS = {"dense": 32, "legr_0.80": 24, "legr_0.50": 16}
TARGETS = {"dense": 1.0, "legr_0.80": 0.8, "legr_0.50": 0.5}
OPSET = 17


def make_weights(width: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.standard_normal((width, 3, 3, 3)) * 0.4).astype(np.float32),
        "b1": (rng.standard_normal(width) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((width, width, 3, 3)) / np.sqrt(width * 9)).astype(np.float32),
        "b2": (rng.standard_normal(width) * 0.1).astype(np.float32),
        "wf": (rng.standard_normal((CLASSES, width)) * 0.5).astype(np.float32),
        "bf": (rng.standard_normal(CLASSES) * 0.1).astype(np.float32),
    }


def make_model(weights: dict[str, np.ndarray], opset: int = OPSET) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, HW, HW])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # N,C,H,W,3,3
    return np.einsum("nchwij,ocij->nohw", win, w, optimize=True) + b[None, :, None, None]


def numpy_forward(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Reference logits of the fixture net, float64 numpy."""
    x = x.astype(np.float64)
    h = np.maximum(_conv3x3(x, weights["w1"], weights["b1"]), 0)
    h = np.maximum(_conv3x3(h, weights["w2"], weights["b2"]), 0)
    g = h.mean(axis=(2, 3))
    return g @ weights["wf"].T + weights["bf"]


def preprocess(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    x = (images.astype(np.float32) / 255.0 - mean) / std
    return x.transpose(0, 3, 1, 2).astype(np.float32)


def build_run(root: Path, n_eval: int = 40, widths: dict[str, int] | None = None) -> Path:
    """Write a complete run directory under ``root`` and return its path."""
    widths = widths or WIDTHS
    run = root / "run"
    (run / "onnx").mkdir(parents=True)
    (run / "data").mkdir()
    rng = np.random.default_rng(123)
    images = rng.integers(0, 256, (n_eval, HW, HW, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, n_eval).astype(np.int64)
    mean = np.array([0.49, 0.48, 0.45], np.float32)
    std = np.array([0.25, 0.24, 0.26], np.float32)
    np.savez(run / "data" / "eval.npz", images=images, labels=labels, mean=mean, std=std)
    x = preprocess(images, mean, std)
    rows, manifest, dense_macs = [], [], None
    for i, (name, width) in enumerate(widths.items()):
        weights = make_weights(width, seed=i)
        path = run / "onnx" / f"{name}.onnx"
        onnx.save(make_model(weights), str(path))
        macs = HW * HW * 9 * (3 * width + width * width) + width * CLASSES
        dense_macs = dense_macs or macs
        top1 = 100.0 * float((numpy_forward(weights, x).argmax(1) == labels).mean())
        (run / "models" / name).mkdir(parents=True)
        (run / "models" / name / "arch.json").write_text(json.dumps({"width": width}))
        np.save(run / "models" / name / "weights.npy", weights, allow_pickle=True)
        rows.append({"name": name, "target": TARGETS.get(name, 0.5), "macs": macs,
                     "macs_ratio": macs / dense_macs, "params": sum(v.size for v in weights.values()),
                     "val_top1": top1, "test_top1": top1, "path": f"models/{name}"})
        manifest.append({"name": name, "file": f"{name}.onnx", "sha256": sha256_file(path),
                         "opset": OPSET, "input_name": "input", "input_shape": ["batch", 3, HW, HW],
                         "output_name": "logits", "parity_max_abs_err": 1e-6})
    with open(run / "flops_table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (run / "onnx" / "manifest.json").write_text(json.dumps({"models": manifest}))
    (run / "config.json").write_text(json.dumps({"model": "tinynet", "dataset": "random16"}))
    return run


def load_weights(run: Path, name: str) -> dict[str, np.ndarray]:
    return np.load(run / "models" / name / "weights.npy", allow_pickle=True).item()


FAST_PROFILE = """\
description = "test profile: ORT CPU, tiny timing"
backend = "onnxruntime"
device = "cpu"
precision = "fp32"
providers = ["CPUExecutionProvider"]
batch_sizes = [1, 4]
threads = 1
warmup_s = 0.0
min_iters = 3
min_seconds = 0.0
opset = 18
round_to = 8
"""


def write_fast_profile(root: Path, name: str = "fast") -> Path:
    path = root / f"{name}.toml"
    path.write_text(FAST_PROFILE)
    return path
