"""The latency table builder (device half, no torch): graphs, grid, calibration, contract."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from legr_edge import latency_table, profile
from legr_edge.device.backends.base import Backend
from legr_edge.device.profiles import load_profile
from legr_edge.errors import LegrError
from legr_edge.latency import graph as lg
from legr_edge.latency.table import (LatencyTable, allowed_widths, fit_calibration, interp2,
                                     sample_widths)
from tests.device.fixture_run import _conv3x3

FAST_TABLE = ["--rounds", "2", "--layer-seconds", "0.002", "--max-widths", "3", "--configs", "2",
              "--e2e-seconds", "0.005", "--no-plot"]


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _build(run_dir: Path, fast_profile: Path, *extra: str) -> dict:
    assert latency_table.main([str(run_dir), "--profile", str(fast_profile), *FAST_TABLE, *extra]) == 0
    return json.loads((run_dir / "latency_table_fast.json").read_text())


# ----- graphs ---------------------------------------------------------------------------------
def test_dense_graph_layers_and_groups(run_dir: Path) -> None:
    dense = lg.read_dense(run_dir / "onnx" / "dense.onnx")
    assert [l.name for l in dense.layers] == ["w1", "w2", "wf"]
    w1, w2, wf = dense.layers
    assert (w1.cin, w1.cout, w1.kernel, w1.pads, w1.hw) == (3, 32, (3, 3), (1, 1, 1, 1), (16, 16))
    assert wf.op == "linear" and (wf.cin, wf.cout) == (32, 10)
    assert dense.fixed[w1.in_group] and dense.fixed[wf.out_group]  # graph input and output
    assert dense.prunable_groups == sorted({w1.out_group, w2.out_group})
    assert w2.in_group == w1.out_group and wf.in_group == w2.out_group


def test_pruned_graph_runs_with_the_requested_widths(run_dir: Path) -> None:
    dense = lg.read_dense(run_dir / "onnx" / "dense.onnx")
    a, b = dense.prunable_groups
    model = lg.pruned(dense, {a: 8, b: 16})
    onnx.checker.check_model(model)
    assert lg.layer_widths(model) == {"w1": (3, 8), "w2": (8, 16), "wf": (16, 10)}
    assert _ort(model, np.zeros((2, 3, 16, 16), np.float32)).shape == (2, 10)


def test_unsupported_channel_op_is_a_clear_error(run_dir: Path) -> None:
    model = onnx.load(str(run_dir / "onnx" / "dense.onnx"))
    for node in model.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Softmax"
            break
    with pytest.raises(LegrError, match="Softmax.*not supported"):
        lg.analyse(model)


def test_two_copies_sum_two_convolutions(run_dir: Path) -> None:
    layer = lg.read_dense(run_dir / "onnx" / "dense.onnx").layers[1]
    two = lg.single_layer(layer, 8, 16, 17, copies=2, seed=3)
    onnx.checker.check_model(two)
    w = {i.name: onnx.numpy_helper.to_array(i) for i in two.graph.initializer}
    x = np.random.default_rng(0).standard_normal((1, 8, 16, 16)).astype(np.float32)
    want = _conv3x3(x, w["w0"], w["b0"]) + _conv3x3(x, w["w1"], w["b1"])
    np.testing.assert_allclose(_ort(two, x), want, rtol=1e-4, atol=1e-4)


# ----- grid and calibration --------------------------------------------------------------------
def test_allowed_widths_follow_the_search_floors() -> None:
    # floor max(2, ceil(0.1*64)=7) rounded up to 4 -> 8; multiples of 4; the full width always
    assert allowed_widths(64, 4, 0.1, 2) == list(range(8, 65, 4))
    assert allowed_widths(10, 4, 0.1, 2) == [4, 8, 10]
    assert allowed_widths(3, 4, 0.1, 2) == [3]
    assert sample_widths(list(range(8, 65, 4)), 4) == [8, 28, 44, 64]


def test_interp2_is_exact_for_bilinear_costs() -> None:
    xs, ys = [4, 8, 16], [8, 32]
    z = np.array([[x * y for y in ys] for x in xs], float)
    assert interp2(xs, ys, z, 8, 32) == 256
    assert interp2(xs, ys, z, 12, 20) == pytest.approx(12 * 20)
    assert interp2(xs, ys, z, 100, 100) == 16 * 32  # clamped at the grid's edge


def test_calibration_recovers_constant_and_affine_overheads() -> None:
    s = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    const = fit_calibration(s[:3], s[:3] + 0.5)
    assert const["kind"] == "constant" and const["overhead_ms"] == pytest.approx(0.5)
    affine = fit_calibration(s, 1.5 * s + 0.2)
    assert affine["kind"] == "affine"
    assert (affine["scale"], affine["overhead_ms"]) == (pytest.approx(1.5), pytest.approx(0.2))


@pytest.mark.parametrize("n", [3, 5])
def test_a_calibration_never_predicts_a_negative_latency(n: int) -> None:
    """Layers timed alone can sum to more than the whole network (each pays a call's
    overhead): a fitted negative overhead would predict a small network below 0 ms, so the
    calibration keeps a non-negative overhead (here a pure scale) instead."""
    s = np.array([1.0, 2.0, 3.0, 4.0, 5.0])[:n]
    cal = fit_calibration(s, 0.8 * s - 0.3)
    assert cal["overhead_ms"] >= 0 and cal["kind"] == "ratio"
    assert 0.5 < cal["scale"] < 0.8                           # so a tiny network stays above 0 ms


# ----- the command ----------------------------------------------------------------------------
def test_command_writes_a_table_that_predicts(run_dir: Path, fast_profile: Path) -> None:
    data = _build(run_dir, fast_profile)
    table = LatencyTable.load(run_dir / "latency_table_fast.json")
    assert table.layer_names() == ["w1", "w2", "wf"]
    assert (table.batch_size, table.precision, data["backend"]) == (1, "fp32", "onnxruntime")
    assert data["backend_info"]["versions"]["onnxruntime"]
    assert data["fingerprint"] and data["device"]
    sig = {l["name"]: l["signature"] for l in data["layers"]}
    assert data["signatures"][sig["w2"]]["in_widths"] == [8, 24, 32]  # round_to 8, sampled to 3
    assert data["signatures"][sig["w1"]]["in_widths"] == [3]          # the image channels are fixed
    roles = [c["role"] for c in data["calibration"]["configs"]]
    assert roles == ["fit", "held_out", "fit"] and data["error"]["n_held_out"] == 1
    assert np.isfinite(data["error"]["held_out_median_pct"])
    assert table.dense_ms() > table.predict({"w1": (3, 8), "w2": (8, 8), "wf": (8, 10)}) > 0
    assert data["build_seconds"] > 0


def test_staircase_plot_is_written(run_dir: Path, fast_profile: Path) -> None:
    pytest.importorskip("matplotlib")
    args = [a for a in FAST_TABLE if a != "--no-plot"]
    assert latency_table.main([str(run_dir), "--profile", str(fast_profile), *args]) == 0
    assert (run_dir / "latency_table_fast.png").stat().st_size > 1000


@pytest.mark.parametrize("case", ["no_run", "no_dense", "bad_onnx"])
def test_bad_input_is_one_line_and_exit_1(case: str, run_dir: Path, fast_profile: Path,
                                          tmp_path: Path) -> None:
    target = run_dir
    if case == "no_run":
        target = tmp_path / "missing"
    elif case == "no_dense":
        m = json.loads((run_dir / "onnx" / "manifest.json").read_text())
        m["models"] = [e for e in m["models"] if e["name"] != "dense"]
        (run_dir / "onnx" / "manifest.json").write_text(json.dumps(m))
    else:
        (run_dir / "onnx" / "dense.onnx").write_bytes(b"not onnx")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "legr_edge.latency_table", str(target), "--profile",
                           str(fast_profile), *FAST_TABLE], capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if " ERROR " in l]
    assert len(errors) == 1, proc.stderr
    assert {"no_run": "not a directory", "no_dense": "no 'dense' model",
            "bad_onnx": "sha256"}[case] in errors[0]


def test_runs_with_torch_unimportable(run_dir: Path, fast_profile: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "no_torch"
    (blocker / "torch").mkdir(parents=True)
    (blocker / "torch" / "__init__.py").write_text("raise ImportError('torch is blocked in this test')\n")
    code = ("import sys; from legr_edge import latency_table; "
            f"rc = latency_table.main({[str(run_dir), '--profile', str(fast_profile), *FAST_TABLE]!r}); "
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None; sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(Path.cwd())])}
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0  # the blocker works
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "latency_table_fast.json").is_file()


# ----- refusal --------------------------------------------------------------------------------
def test_table_is_refused_for_another_precision_or_batch(run_dir: Path, fast_profile: Path,
                                                         tmp_path: Path) -> None:
    _build(run_dir, fast_profile)
    table = LatencyTable.load(run_dir / "latency_table_fast.json")
    table.check_profile(load_profile(str(fast_profile)))  # its own profile: accepted
    text = fast_profile.read_text()
    other = tmp_path / "other.toml"
    other.write_text(text.replace("batch_sizes = [1, 4]", "batch_sizes = [8]"))
    with pytest.raises(LegrError, match="batch size 1 != 8"):
        table.check_profile(load_profile(str(other)))
    data = json.loads((run_dir / "latency_table_fast.json").read_text())
    data["precision"] = "fp16"
    with pytest.raises(LegrError, match="precision 'fp16'"):
        LatencyTable(data, "t.json").check_profile(load_profile(str(fast_profile)))
    with pytest.raises(LegrError, match="wider than in latency table"):
        table.check_widths_known({"w2": (64, 64)}, "other.onnx")


def test_corrupt_table_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"format": "legr_edge.latency_table/1"}))
    with pytest.raises(LegrError, match="missing key"):
        LatencyTable.load(path)
    with pytest.raises(LegrError, match="not found"):
        LatencyTable.load(tmp_path / "nope.json")


# ----- the loop closes in profile -------------------------------------------------------------
def test_profile_csv_shows_predicted_next_to_measured(run_dir: Path, fast_profile: Path) -> None:
    _build(run_dir, fast_profile)
    assert profile.main([str(run_dir), "--profile", str(fast_profile), "--rounds", "1"]) == 0
    with open(run_dir / "latency_fast.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    b1 = [r for r in rows if r["batch_size"] == "1"]
    assert {r["name"] for r in b1} == {"dense", "legr_0.80", "legr_0.50"}
    table = LatencyTable.load(run_dir / "latency_table_fast.json")
    for r in b1:  # each member's own widths, read from its ONNX, through the table
        widths = lg.layer_widths(onnx.load(str(run_dir / "onnx" / f"{r['name']}.onnx")))
        assert float(r["predicted_ms"]) == pytest.approx(table.predict(widths), rel=1e-6)
    assert lg.layer_widths(onnx.load(str(run_dir / "onnx" / "legr_0.50.onnx")))["w2"] == (16, 16)
    for r in b1:
        ratio = float(r["latency_ms_median"]) / float(r["predicted_ms"])
        assert float(r["measured_over_predicted"]) == pytest.approx(ratio)
    assert all(r["predicted_ms"] == "" for r in rows if r["batch_size"] == "4")  # table is batch 1


# ----- backends: only the public life cycle --------------------------------------------------
class RecordingBackend(Backend):
    """Stands in for TensorRT: device-timed ``step``, one build per graph, caches in cache_dir."""

    name = "recording"
    calls: list = []

    def activate_impl(self) -> None:
        self.calls.append(("activate", self.spec.onnx_path.name, self.spec.cache_dir))

    def deactivate_impl(self) -> None:
        self.calls.append(("deactivate", self.spec.onnx_path.name, None))

    def prepare_impl(self, batch_size: int) -> None:
        self.calls.append(("prepare", batch_size, None))

    def step_impl(self) -> float:
        return 0.001 * self.spec.input_shape[0]  # "device" ms grows with input channels

    def info_impl(self) -> dict:
        return {"versions": {"recording": "1"}}


def test_builder_uses_only_the_backend_life_cycle(run_dir: Path, fast_profile: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    RecordingBackend.calls = []
    monkeypatch.setattr(latency_table, "get_backend", lambda name: RecordingBackend)
    data = _build(run_dir, fast_profile)
    calls = RecordingBackend.calls
    activations = [c for c in calls if c[0] == "activate"]
    assert len(activations) == len([c for c in calls if c[0] == "deactivate"])
    assert {c[2] for c in activations} == {run_dir / "engines" / "fast" / "latency"}
    assert all(c[1] == 1 for c in calls if c[0] == "prepare")
    assert data["backend_info"]["versions"] == {"recording": "1"}
    # the second copy of a layer costs the same input-proportional "device" time: marginal ~ 0
    sig = next(l["signature"] for l in data["layers"] if l["name"] == "w2")
    assert np.allclose(data["signatures"][sig]["ms"], 1e-6)


def test_tensorrt_table_where_tensorrt_is_installed(run_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here (needs an NVIDIA GPU)")
    pytest.importorskip("pycuda", reason="pycuda is not installed here")
    prof = tmp_path / "trt.toml"
    prof.write_text('backend = "tensorrt"\ndevice = "cuda"\nprecision = "fp16"\nbatch_sizes = [1]\n'
                    'warmup_s = 0.0\nmin_iters = 3\nmin_seconds = 0.0\nround_to = 8\n')
    assert latency_table.main([str(run_dir), "--profile", str(prof), *FAST_TABLE]) == 0
    assert LatencyTable.load(run_dir / "latency_table_trt.json").precision == "fp16"


def test_pruned_graph_with_shared_bias_behind_identity(run_dir: Path) -> None:
    """TorchScript exports share equal initializers through Identity nodes; each conv is sliced alone."""
    model = onnx.load(str(run_dir / "onnx" / "dense.onnx"))
    conv2 = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[1] == "w2")
    model.graph.node.insert(0, onnx.helper.make_node("Identity", ["b1"], ["b1_shared"]))
    conv2.input[2] = "b1_shared"  # w1 and w2 now read the same 32-element bias
    dense = lg.analyse(model)
    a, b = dense.prunable_groups
    pruned = lg.pruned(dense, {a: 8, b: 24})
    onnx.checker.check_model(pruned)
    assert _ort(pruned, np.zeros((1, 3, 16, 16), np.float32)).shape == (1, 10)
    assert lg.layer_widths(pruned) == {"w1": (3, 8), "w2": (8, 24), "wf": (24, 10)}
    assert not any(n.op_type == "Identity" for n in pruned.graph.node)  # the dead Identity is dropped


class FailingBackend(RecordingBackend):
    def activate_impl(self) -> None:
        raise RuntimeError("engine build failed\nlong builder log")


def test_a_failing_graph_stops_with_one_line(run_dir: Path, fast_profile: Path,
                                             monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setattr(latency_table, "get_backend", lambda name: FailingBackend)
    assert latency_table.main([str(run_dir), "--profile", str(fast_profile), *FAST_TABLE]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "RuntimeError: engine build failed" in errors[0]
    assert "long builder log" not in errors[0]
    assert not (run_dir / "latency_table_fast.json").exists()


def test_torch_profile_is_refused(run_dir: Path, tmp_path: Path) -> None:
    prof = tmp_path / "t.toml"
    prof.write_text('backend = "torch"\nprecision = "fp32"\n')
    with pytest.raises(LegrError, match="torch backend"):
        latency_table.build_table(run_dir, load_profile(str(prof)), latency_table.Settings(round_to=8))
