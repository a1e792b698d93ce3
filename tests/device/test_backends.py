"""Every backend against a numpy reference of the fixture net, through the same life cycle.

onnxruntime always runs here; tensorrt skips unless tensorrt + pycuda + a GPU are
present; torch runs when torch is importable, with a stand-in for the workstation
half's ``legr_edge.models.arch`` that builds the fixture net from its weights.
"""
from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from legr_edge.device.backends import ModelSpec, backend_names, get_backend
from legr_edge.device.backends.onnxrt import fell_back, provider_options
from legr_edge.device.onnx_info import inspect_onnx, info_from_model
from legr_edge.device.profiles import Profile, load_profile
from legr_edge.device.timing import measure
from legr_edge.errors import LegrError
from tests.device.fixture_run import HW, load_weights, make_model, make_weights, numpy_forward, preprocess

REPO = Path(__file__).resolve().parents[2]
FAST = dict(warmup_s=0.0, min_iters=3, min_seconds=0.0, batch_sizes=(1, 4))


def _profile_for(backend: str) -> Profile:
    if backend == "tensorrt":
        base = load_profile(REPO / "profiles" / "gpu-trt-fp16.toml")
    elif backend == "torch":
        base = dataclasses.replace(load_profile("cpu-ort"), backend="torch", providers=(), threads=1)
    else:
        base = dataclasses.replace(load_profile("cpu-ort"), threads=1)
    return dataclasses.replace(base, name=f"test-{backend}", **FAST)


def _install_fake_arch(monkeypatch: pytest.MonkeyPatch) -> None:
    """legr_edge.models.arch.load_model stand-in: the fixture net as a torch module."""
    import torch

    def load_model(model_dir: Path, map_location: str = "cpu") -> torch.nn.Module:
        w = np.load(Path(model_dir) / "weights.npy", allow_pickle=True).item()
        width = json.loads((Path(model_dir) / "arch.json").read_text())["width"]
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, 10))
        with torch.no_grad():
            for mod, (wk, bk) in zip((net[0], net[2], net[6]), (("w1", "b1"), ("w2", "b2"), ("wf", "bf"))):
                mod.weight.copy_(torch.from_numpy(w[wk]))
                mod.bias.copy_(torch.from_numpy(w[bk]))
        return net.eval()

    mod = types.ModuleType("legr_edge.models.arch")
    mod.__spec__ = importlib.machinery.ModuleSpec("legr_edge.models.arch", None)
    mod.load_model = load_model
    monkeypatch.setitem(sys.modules, "legr_edge.models.arch", mod)


@pytest.fixture(params=backend_names())
def backend_case(request: pytest.FixtureRequest, run_dir: Path, monkeypatch: pytest.MonkeyPatch):
    name = request.param
    if name == "torch":
        if importlib.util.find_spec("torch") is None:
            pytest.skip("torch not importable: the torch eager backend is optional")
        _install_fake_arch(monkeypatch)
    profile = _profile_for(name)
    cls = get_backend(name)
    try:
        cls.check_available(profile)
    except LegrError as e:
        pytest.skip(f"{name} backend unavailable here: {e}")
    spec = ModelSpec(name="legr_0.50", onnx_path=run_dir / "onnx" / "legr_0.50.onnx",
                     onnx_sha256="0" * 64, input_shape=(3, HW, HW),
                     model_dir=run_dir / "models" / "legr_0.50",
                     cache_dir=run_dir / "engines" / profile.name)
    return cls(spec, profile), load_weights(run_dir, "legr_0.50")


def test_backend_matches_numpy_reference_and_times(backend_case) -> None:
    backend, weights = backend_case
    x = np.random.default_rng(5).standard_normal((4, 3, HW, HW)).astype(np.float32)
    ref = numpy_forward(weights, x)
    tol = 5e-2 if backend.profile.precision == "fp16" else 1e-4
    with backend:
        y = backend.infer(x)
        assert y.shape == (4, 10) and y.dtype == np.float32
        np.testing.assert_allclose(y, ref, atol=tol, rtol=tol)
        for b in backend.profile.batch_sizes:
            backend.prepare(b)
            first = backend.step()
            assert first is None or first > 0
            m = measure(backend.step, batch_size=b, warmup_s=0, min_iters=3, min_seconds=0)
            assert m.stats.n == 3 and m.stats.median > 0
        info = backend.info()
    assert info["backend"] == backend.name and info["precision"] and info["providers"]
    assert not backend.active
    with pytest.raises(RuntimeError):
        backend.infer(x)


def test_life_cycle_order_is_enforced(run_dir: Path) -> None:
    profile = _profile_for("onnxruntime")
    spec = ModelSpec("dense", run_dir / "onnx" / "dense.onnx", "0" * 64, input_shape=(3, HW, HW))
    be = get_backend("onnxruntime")(spec, profile)
    with pytest.raises(RuntimeError, match="before activate"):
        be.prepare(1)
    be.activate()
    with pytest.raises(RuntimeError, match="before prepare"):
        be.step()
    with pytest.raises(ValueError):
        be.infer(np.zeros((3, HW, HW), np.float32))  # no batch axis
    be.deactivate()
    be.deactivate()  # idempotent


def test_ort_matches_reference_on_eval_preprocessing(run_dir: Path) -> None:
    """The contract's preprocessing fed through ORT equals the numpy net on the same input."""
    data = np.load(run_dir / "data" / "eval.npz")
    x = preprocess(data["images"][:8], data["mean"], data["std"])
    spec = ModelSpec("dense", run_dir / "onnx" / "dense.onnx", "0" * 64, input_shape=(3, HW, HW))
    with get_backend("onnxruntime")(spec, _profile_for("onnxruntime")) as be:
        np.testing.assert_allclose(be.infer(x), numpy_forward(load_weights(run_dir, "dense"), x),
                                   atol=1e-4, rtol=1e-4)
        assert be.info()["providers"] == ["CPUExecutionProvider"]
        assert be.info()["fell_back_to_cpu"] is False


def test_ort_records_silent_fallback_to_cpu(run_dir: Path) -> None:
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider is available here: no fallback to observe")
    profile = dataclasses.replace(_profile_for("onnxruntime"), device="cuda",
                                  providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    spec = ModelSpec("dense", run_dir / "onnx" / "dense.onnx", "0" * 64, input_shape=(3, HW, HW))
    with get_backend("onnxruntime")(spec, profile) as be:
        info = be.info()
    assert info["providers"] == ["CPUExecutionProvider"] and info["fell_back_to_cpu"] is True
    assert any("CUDAExecutionProvider" in w and "NOT cuda numbers" in w for w in info["warnings"])


def test_provider_options_mapping(tmp_path: Path) -> None:
    base = _profile_for("onnxruntime")
    trt = dataclasses.replace(base, device="cuda", precision="fp16", batch_sizes=(1, 8),
                              providers=("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                         "CPUExecutionProvider"),
                              workspace_mib=512, dla_core=0, cuda_graphs=True)
    entries = provider_options(trt, "input", (3, 32, 32), tmp_path)
    assert [n for n, _ in entries] == list(trt.providers)
    t = entries[0][1]
    assert t["trt_fp16_enable"] == "1" and t["trt_int8_enable"] == "0"
    assert t["trt_max_workspace_size"] == str(512 << 20)
    assert t["trt_profile_min_shapes"] == "input:1x3x32x32"
    assert t["trt_profile_max_shapes"] == "input:8x3x32x32"
    assert t["trt_dla_enable"] == "1" and t["trt_dla_core"] == "0"
    assert t["trt_engine_cache_enable"] == "1" and t["trt_engine_cache_path"].startswith(str(tmp_path))
    assert entries[1][1]["enable_cuda_graph"] == "1"
    assert entries[2] == ("CPUExecutionProvider", {})
    assert provider_options(base, "input", (3, 32, 32), None) == [("CPUExecutionProvider", {})]


def test_fell_back_only_counts_gpu_providers() -> None:
    assert fell_back(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]) == [
        "CUDAExecutionProvider"]
    assert fell_back(["CPUExecutionProvider"], ["CPUExecutionProvider"]) == []


def test_onnx_info(run_dir: Path) -> None:
    info = inspect_onnx(run_dir / "onnx" / "dense.onnx")
    assert (info.opset, info.float_type, info.has_qdq) == (17, "fp32", False)
    assert info.input_names == ("input",) and info.output_names == ("logits",)
    from onnx import numpy_helper
    half = make_model(make_weights(8, 0))
    half.graph.initializer[0].CopyFrom(numpy_helper.from_array(
        numpy_helper.to_array(half.graph.initializer[0]).astype(np.float16), "w1"))
    assert info_from_model(half).float_type == "fp16"


def test_unknown_backend_is_a_user_error() -> None:
    with pytest.raises(LegrError, match="unknown backend 'openvino'"):
        get_backend("openvino")


def test_failed_activation_cleans_up(run_dir: Path) -> None:
    """A backend whose activate_impl raises gets deactivate_impl called, and stays inactive."""
    from legr_edge.device.backends.base import Backend

    class Broken(Backend):
        name = "broken"
        cleaned = False

        def activate_impl(self) -> None:
            raise RuntimeError("engine build failed")

        def deactivate_impl(self) -> None:
            type(self).cleaned = True

    be = Broken(ModelSpec("dense", run_dir / "onnx" / "dense.onnx", "0" * 64), _profile_for("onnxruntime"))
    with pytest.raises(RuntimeError, match="engine build failed"):
        be.activate()
    assert Broken.cleaned and not be.active


def test_fp16_conversion_keeps_float32_io_and_top1(run_dir: Path, tmp_path: Path) -> None:
    """TensorRT 11 path: the converted ONNX is FP16 inside, FP32 at its edges, same predictions."""
    from legr_edge.device.fp16 import convert_to_fp16, converter_available
    if not converter_available():
        pytest.skip("onnxconverter-common not installed (legr_edge[fp16])")
    import onnx
    dst = convert_to_fp16(run_dir / "onnx" / "dense.onnx", tmp_path / "dense.fp16.onnx")
    assert inspect_onnx(dst).float_type == "fp16"
    m = onnx.load(str(dst))
    assert [v.type.tensor_type.elem_type for v in list(m.graph.input) + list(m.graph.output)] == [
        onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT]
    spec = ModelSpec("dense", dst, "0" * 64, input_shape=(3, HW, HW))
    data = np.load(run_dir / "data" / "eval.npz")
    x = preprocess(data["images"], data["mean"], data["std"])
    ref = numpy_forward(load_weights(run_dir, "dense"), x)
    with get_backend("onnxruntime")(spec, _profile_for("onnxruntime")) as be:
        y = be.infer(x)
    np.testing.assert_allclose(y, ref, atol=2e-2, rtol=2e-2)
    assert (y.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_ir_version_too_new_is_one_clear_reason(run_dir: Path) -> None:
    """An ONNX IR newer than this onnxruntime reads: the error names both versions and the fix."""
    import onnx
    path = run_dir / "onnx" / "dense.onnx"
    m = onnx.load(str(path))
    m.ir_version = 99
    onnx.save(m, str(path))
    spec = ModelSpec("dense", path, "0" * 64, input_shape=(3, HW, HW))
    with pytest.raises(RuntimeError, match=r"reads ONNX IR version <= \d+, but dense.onnx is IR 99.*>= 1\.18"):
        get_backend("onnxruntime")(spec, _profile_for("onnxruntime")).activate()
