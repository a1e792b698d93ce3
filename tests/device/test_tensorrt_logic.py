"""TensorRT build planning and the GPU runtime half, against the strict fake TensorRT.

The fake (tests/device/strict_trt.py) knows only names the real release has (lists
extracted from the real bindings wheels), so a removed or misspelt API fails here:
BuilderFlag.FP16 and EXPLICIT_BATCH do not exist on 11.4, STRONGLY_TYPED not on 8.6.
"""
from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from legr_edge.device.backends import ModelSpec, get_backend
from legr_edge.device.backends import tensorrt as trt_backend
from legr_edge.device.backends.base import BackendUnavailable
from legr_edge.device.backends.tensorrt_build import (
    build_engine_bytes, check_opset, check_trt_version, device_identity, engine_cache_key,
    engine_file, network_flag_bits, parse_version, parser_max_opset, plan_build,
    timing_cache_file, timing_cache_key)
from legr_edge.device.fp16 import converter_available
from legr_edge.device.profiles import load_profile
from legr_edge.errors import LegrError
from tests.device.fixture_run import HW, load_weights, numpy_forward
from tests.device.strict_trt import FakeCuda, FakeTrt, calls, settings

REPO = Path(__file__).resolve().parents[2]


def _build(stem: str, profile_name: str = "gpu-trt-fp16", onnx_float: str = "fp32", **kw):
    trt = FakeTrt(stem, **kw)
    profile = load_profile(profile_name)
    plan = plan_build(trt.__version__, profile.precision, onnx_float, dla=profile.dla_core >= 0)
    out = build_engine_bytes(trt, None, b"onnx", plan, profile, "input", (3, 32, 32), None)
    return plan, trt, out, profile


def test_parse_version() -> None:
    assert parse_version("10.3.0.30") == (10, 3, 0)
    assert parse_version("8.5.2") == (8, 5, 2)
    assert parse_version("11.0") == (11, 0, 0)
    assert parse_version("10.1.0rc1") == (10, 1, 0)


def test_trt10_fp16_uses_builder_flag() -> None:
    plan, trt, (engine, cache), profile = _build("10.3")
    assert plan.network_flags == () and plan.builder_flags == ("FP16",) and plan.precision == "fp16"
    assert calls(trt, "create_network") == [(0,)]
    assert calls(trt, "set_flag") == [(trt.BuilderFlag.FP16,)]
    assert calls(trt, "set_memory_pool_limit") == [(trt.MemoryPoolType.WORKSPACE,
                                                    profile.workspace_mib << 20)]
    assert (engine, cache) == (b"ENGINE", b"TIMING")


def test_trt10_one_optimisation_profile_per_batch_size() -> None:
    _, trt, _, profile = _build("10.3")
    shapes = calls(trt, "set_shape")
    assert [s[1] for s in shapes] == [(b, 3, 32, 32) for b in profile.batch_sizes]
    assert all(s[0] == "input" and s[1] == s[2] == s[3] for s in shapes)
    assert len(calls(trt, "add_optimization_profile")) == len(profile.batch_sizes)
    assert calls(trt, "create_timing_cache") == [(b"",)]


def test_trt11_fp16_profile_converts_the_onnx_and_sets_no_flag() -> None:
    plan, trt, _, _ = _build("11.4")
    assert plan.network_flags == ("STRONGLY_TYPED",) and plan.convert_fp16
    assert calls(trt, "create_network") == [(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED),)]
    assert calls(trt, "set_flag") == [] and plan.precision == "fp16" and plan.notes == ()
    with pytest.raises(AttributeError, match="FP16"):
        trt.BuilderFlag.FP16  # the real 11.4 has no FP16 flag: the fake neither


def test_trt11_fp16_onnx_needs_no_conversion() -> None:
    plan, _, _, _ = _build("11.4", onnx_float="fp16")
    assert plan.precision == "fp16" and not plan.convert_fp16 and plan.notes == ()


def test_trt11_int8_needs_qdq() -> None:
    assert plan_build("11.0", "int8", "fp32", has_qdq=True).precision == "int8"
    no_qdq = plan_build("11.0", "int8", "fp32", has_qdq=False)
    assert no_qdq.precision == "fp32" and "Q/DQ" in no_qdq.notes[0] and not no_qdq.calibrate


def test_trt8_needs_explicit_batch() -> None:
    plan, trt, _, _ = _build("8.6", profile_name="jetson-xavier-nx")
    assert plan.network_flags == ("EXPLICIT_BATCH",)
    assert calls(trt, "create_network") == [(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH),)]


def test_trt10_int8_calibrates_unless_qdq() -> None:
    cal = plan_build("10.3", "int8", has_qdq=False)
    assert cal.builder_flags[:2] == ("INT8", "FP16") and cal.calibrate
    assert not plan_build("10.3", "int8", has_qdq=True).calibrate


def test_dla_sets_device_type_and_gpu_fallback(tmp_path: Path) -> None:
    text = (REPO / "profiles" / "jetson-agx-orin.toml").read_text().replace("dla_core = -1", "dla_core = 1")
    (tmp_path / "agx-dla.toml").write_text(text)
    trt = FakeTrt("10.3")
    profile = load_profile(tmp_path / "agx-dla.toml")
    plan = plan_build("10.3.0", profile.precision, dla=True)
    build_engine_bytes(trt, None, b"onnx", plan, profile, "input", (3, 32, 32), b"OLD")
    assert "GPU_FALLBACK" in plan.builder_flags
    assert (trt.BuilderFlag.GPU_FALLBACK,) in calls(trt, "set_flag")
    assert settings(trt, "default_device_type") == [trt.DeviceType.DLA]
    assert settings(trt, "DLA_core") == [1]
    assert calls(trt, "create_timing_cache") == [(b"OLD",)]


def test_flag_missing_from_the_release_is_skipped() -> None:
    trt = FakeTrt("8.6")  # 8.6 has no STRONGLY_TYPED
    assert network_flag_bits(trt, plan_build("11.0", "fp32")) == 0


def test_parser_errors_are_reported() -> None:
    with pytest.raises(RuntimeError, match="Unsupported operator Foo"):
        _build("10.3", parse_ok=False)


# ----- version gates ---------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["8.4.1", "8.2.3", "7.1.3"])
def test_tensorrt_older_than_8_5_is_refused_up_front(version: str) -> None:
    with pytest.raises(BackendUnavailable, match=rf"TensorRT {version} is too old.*8\.5.*cpu-ort"):
        check_trt_version(version, "jetson-xavier-nx")
    check_trt_version("8.5.2", "x")  # 8.5 is fine


def test_opset_is_checked_against_the_installed_parser() -> None:
    assert parser_max_opset("8.5.2") == parser_max_opset("8.6.2") == 17
    assert parser_max_opset("10.3.0") == parser_max_opset("11.4.0") == 20
    with pytest.raises(RuntimeError, match=r"opset 18.*TensorRT 8\.6\.2.*<= 17.*--opset 17"):
        check_opset(18, "8.6.2")  # JetPack 6.0: TensorRT 8.6 although the profile says 18
    check_opset(17, "8.6.2")
    check_opset(18, "10.3.0")


# ----- cache keys -------------------------------------------------------------------------------
BASE = dict(onnx_sha256="a" * 64, trt_version="10.3.0.30", device_name="Orin", precision="fp16")


@pytest.mark.parametrize("field, value", [
    ("onnx_sha256", "b" * 64), ("trt_version", "10.3.0.26"), ("device_name", "Orin Nano"),
    ("precision", "int8")])
def test_engine_key_changes_with_each_input(field: str, value: str) -> None:
    assert engine_cache_key(**{**BASE, field: value}) != engine_cache_key(**BASE)


def test_engine_key_is_stable_and_covers_build_settings() -> None:
    assert engine_cache_key(**BASE) == engine_cache_key(**BASE)
    assert engine_cache_key(**BASE, batch_sizes=(1, 8)) != engine_cache_key(**BASE, batch_sizes=(1,))
    assert engine_cache_key(**BASE, dla_core=0) != engine_cache_key(**BASE)


def test_two_orins_get_different_keys() -> None:
    """CUDA calls both boards 'Orin': SM count, memory and the device-tree model tell them apart."""
    nano = device_identity({"name": "Orin", "compute_capability": "8.7", "sm_count": 8,
                            "total_mem_mib": 7620}, "NVIDIA Jetson Orin Nano Developer Kit")
    agx = device_identity({"name": "Orin", "compute_capability": "8.7", "sm_count": 16,
                           "total_mem_mib": 62800}, "NVIDIA Jetson AGX Orin Developer Kit")
    assert "sm_8.7" in nano and "8SM" in nano and "7620MiB" in nano and "Orin Nano" in nano
    assert nano != agx
    assert engine_cache_key(**{**BASE, "device_name": nano}) != engine_cache_key(**{**BASE, "device_name": agx})
    assert timing_cache_key("10.3", nano, "fp16") != timing_cache_key("10.3", agx, "fp16")


def test_timing_cache_key_is_per_device_and_version_not_per_model() -> None:
    k = timing_cache_key("10.3", "Orin", "fp16")
    assert k == timing_cache_key("10.3", "Orin", "fp16")
    assert k != timing_cache_key("10.4", "Orin", "fp16") != timing_cache_key("10.3", "AGX", "fp16")
    d = Path("RUN/engines/p")
    assert engine_file(d, "legr_0.50", "k1").name == "legr_0.50.k1.engine"
    assert timing_cache_file(d, k).parent == d


# ----- availability -----------------------------------------------------------------------------
def _block_cuda_bindings(monkeypatch: pytest.MonkeyPatch) -> None:
    for mod in ("pycuda", "pycuda.driver", "cuda", "cuda.bindings", "cuda.bindings.runtime",
                "cuda.cudart"):
        monkeypatch.setitem(sys.modules, mod, None)


def test_missing_tensorrt_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    with pytest.raises(BackendUnavailable) as e:
        get_backend("tensorrt").check_available(load_profile("jetson-orin-nano"))
    msg = str(e.value)
    assert "tensorrt" in msg and "legr_edge[trt]" in msg and "JetPack" in msg and "cpu-ort" in msg
    assert isinstance(e.value, LegrError)


def test_missing_cuda_binding_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    _block_cuda_bindings(monkeypatch)
    with pytest.raises(BackendUnavailable, match="cuda-python.*pycuda.*cpu-ort"):
        get_backend("tensorrt").check_available(load_profile("jetson-orin-nano"))


def test_old_tensorrt_is_refused_by_check_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.4.1"))
    with pytest.raises(BackendUnavailable, match="too old"):
        get_backend("tensorrt").check_available(load_profile("jetson-xavier-nx"))


def test_trt11_fp16_without_converter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.4.0"))
    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)
    with pytest.raises(BackendUnavailable, match="onnxconverter-common"):
        get_backend("tensorrt").check_available(load_profile("gpu-trt-fp16"))


# ----- the runtime half on the strict fake ------------------------------------------------------
FAST = dict(warmup_s=0.0, min_iters=3, min_seconds=0.0, batch_sizes=(1, 4))


def _backend(monkeypatch: pytest.MonkeyPatch, run_dir: Path, stem: str = "10.3", name: str = "legr_0.50",
             graphs: bool = True, fail=None, execute_results=None, **profile_kw):
    weights = load_weights(run_dir, name)
    trt = FakeTrt(stem, model=lambda x: numpy_forward(weights, x), execute_results=execute_results,
                  input_shape=(3, HW, HW))
    cuda = FakeCuda(trt, graphs=graphs, fail=fail)
    monkeypatch.setattr(trt_backend, "_import_trt", lambda profile: trt)
    monkeypatch.setattr(trt_backend, "_import_cuda", lambda profile: cuda)
    profile = dataclasses.replace(load_profile("gpu-trt-fp16"), **{**FAST, **profile_kw})
    spec = ModelSpec(name=name, onnx_path=run_dir / "onnx" / f"{name}.onnx", onnx_sha256="0" * 64,
                     input_shape=(3, HW, HW), cache_dir=run_dir / "engines" / profile.name)
    return trt_backend.TensorRTBackend(spec, profile), trt, cuda, weights


@pytest.mark.parametrize("stem", ["8.6", "10.3", "11.4"])
def test_runtime_half_infers_and_times_on_each_release(monkeypatch, run_dir: Path, stem: str) -> None:
    convert = stem == "11.4" and converter_available()  # fp16 on 11.x converts the ONNX
    kw = {} if convert or stem != "11.4" else {"precision": "fp32"}
    be, trt, cuda, weights = _backend(monkeypatch, run_dir, stem, **kw)
    x = np.random.default_rng(1).standard_normal((4, 3, HW, HW)).astype(np.float32)
    with be:
        np.testing.assert_allclose(be.infer(x), numpy_forward(weights, x), rtol=1e-5, atol=1e-5)
        be.prepare(1)
        assert be.step() is None  # latency mode: host-timed enqueue + wait
        info = be.info()
    assert info["cuda_graphs"] is True and info["cuda_graphs_problem"] is None
    assert info["timing_mode"] == "latency" and "host latency" in info["measures"]
    assert info["onnx_converted_to_fp16"] is convert
    assert "launch" in cuda.calls and not cuda.live_graphs  # graph replayed, then freed
    assert not cuda.live_handles and not trt._memory  # streams, events, buffers freed
    assert be.engine_path.is_file()


def test_failed_enqueue_raises_instead_of_timing_nothing(monkeypatch, run_dir: Path) -> None:
    # prepare's warm-up run succeeds, the capture's enqueue succeeds, then a step fails
    be, trt, cuda, _ = _backend(monkeypatch, run_dir, cuda_graphs=False,
                                execute_results=[True, True, False])
    with be:
        be.prepare(1)
        be.step()
        with pytest.raises(RuntimeError, match="execute_async_v3 returned False"):
            be.step()


def test_failed_capture_is_ended_discarded_and_reported(monkeypatch, run_dir: Path) -> None:
    # warm-up enqueue ok, then the enqueue inside the capture returns False
    be, trt, cuda, _ = _backend(monkeypatch, run_dir, execute_results=[True, False])
    with be:
        be.prepare(1)
        assert not cuda.capturing  # the capture was ended
        assert "end_capture" in cuda.calls and "instantiate" not in cuda.calls
        assert not cuda.live_graphs  # the half-made graph was destroyed
        be.step()
        info = be.info()
    assert info["cuda_graphs"] is False and "returned False" in info["cuda_graphs_problem"]
    assert any("CUDA graphs are NOT used" in w for w in info["warnings"])


def test_pycuda_reports_graphs_unavailable(monkeypatch, run_dir: Path) -> None:
    be, trt, cuda, _ = _backend(monkeypatch, run_dir, graphs=False)
    with be:
        be.prepare(1)
        info = be.info()
    assert "begin_capture" not in cuda.calls
    assert info["cuda_graphs_requested"] is True and info["cuda_graphs"] is False
    assert "no CUDA stream capture" in info["cuda_graphs_problem"]
    assert any("NOT used" in w for w in info["warnings"])


def test_capture_begin_error_is_reported(monkeypatch, run_dir: Path) -> None:
    be, trt, cuda, _ = _backend(monkeypatch, run_dir,
                                fail={"begin_capture": "cudaErrorStreamCaptureUnsupported"})
    with be:
        be.prepare(1)
        info = be.info()
    assert info["cuda_graphs"] is False and "cudaErrorStreamCaptureUnsupported" in info["cuda_graphs_problem"]


def test_throughput_mode_keeps_two_in_flight_and_reports_gpu_time(monkeypatch, run_dir: Path) -> None:
    be, trt, cuda, _ = _backend(monkeypatch, run_dir, cuda_graphs=False, timing_mode="throughput")
    with be:
        be.prepare(4)
        slot = be._current
        assert len(slot.in_flight) == 1  # primed
        ms = [be.step() for _ in range(5)]
        assert len(slot.in_flight) == 1  # each step enqueues one and collects the oldest
        info = be.info()
    assert ms == [cuda.ms] * 5
    assert cuda.calls.count("record") == 2 * 6 and cuda.calls.count("elapsed_ms") == 5
    assert info["timing_mode"] == "throughput" and "GPU compute" in info["measures"]


def test_engine_is_reused_by_key(monkeypatch, run_dir: Path) -> None:
    be, trt, _, _ = _backend(monkeypatch, run_dir)
    with be:
        pass
    assert calls(trt, "build_serialized_network") and be.info()["engine_reused"] is False
    be2, trt2, _, _ = _backend(monkeypatch, run_dir)
    with be2:
        pass
    assert not calls(trt2, "build_serialized_network") and be2.info()["engine_reused"] is True


def test_installed_parser_opset_fails_the_model(monkeypatch, run_dir: Path) -> None:
    import onnx
    path = run_dir / "onnx" / "legr_0.50.onnx"
    m = onnx.load(str(path))
    m.opset_import[0].version = 18
    onnx.save(m, str(path))
    be, _, _, _ = _backend(monkeypatch, run_dir, stem="8.6")
    with pytest.raises(RuntimeError, match=r"opset 18.*TensorRT 8\.6\.1"):
        be.activate()
    assert not be.active


def test_int8_calibrator_feeds_eval_images_through_the_cuda_binding(monkeypatch, run_dir: Path) -> None:
    """TensorRT 10 INT8 without Q/DQ: the calibrator TensorRT gets hands out device pointers."""
    be, trt, cuda, _ = _backend(monkeypatch, run_dir, precision="int8", cuda_graphs=False)
    calib = np.random.default_rng(0).standard_normal((10, 3, HW, HW)).astype(np.float32)
    be.spec = dataclasses.replace(be.spec, calibration=calib)
    with be:
        (calibrator,) = settings(trt, "int8_calibrator")
        assert calibrator.get_batch_size() == 1
        ptrs = calibrator.get_batch(["input"])
        assert len(ptrs) == 1 and np.array_equal(
            np.frombuffer(trt._memory[ptrs[0]], np.float32).reshape(1, 3, HW, HW), calib[:1])
        assert calls(trt, "set_calibration_profile")
    assert be.info()["build_plan"]["calibrate"] is True
