"""TensorRT backend logic that needs no GPU: version branching, build config, cache keys.

A fake ``tensorrt`` module records what the builder is told. The TensorRT 11 fake
has no BuilderFlag.FP16 at all (as in the real 11.x), so touching it would fail.
"""
from __future__ import annotations

import enum
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from legr_edge.device.backends import get_backend
from legr_edge.device.backends.tensorrt import (
    build_engine_bytes, engine_cache_key, engine_file, network_flag_bits, parse_version,
    plan_build, timing_cache_file, timing_cache_key)
from legr_edge.device.profiles import load_profile
from legr_edge.errors import LegrError

REPO = Path(__file__).resolve().parents[2]


class _Flag10(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    GPU_FALLBACK = 3


class _Flag11(enum.IntEnum):  # precision flags removed in TensorRT 11
    GPU_FALLBACK = 3


class _NetFlag8(enum.IntEnum):
    EXPLICIT_BATCH = 0


class _NetFlag10(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 5


class _Recorder:
    def __init__(self, log: list, name: str) -> None:
        self._log, self._name = log, name

    def __getattr__(self, attr: str) -> Any:
        def call(*args: Any, **kw: Any) -> Any:
            self._log.append((self._name, attr, args))
            return _RESULTS.get(attr, _Recorder(self._log, attr))
        return call

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr.startswith("_"):
            object.__setattr__(self, attr, value)
        else:
            self._log.append((self._name, f"set {attr}", (value,)))


class _Parser:
    def __init__(self, ok: bool) -> None:
        self.ok, self.num_errors = ok, 0 if ok else 1

    def parse(self, data: bytes) -> bool:
        return self.ok

    def get_error(self, i: int) -> str:
        return "Unsupported operator Foo"


class _Serialized(bytes):
    def serialize(self) -> bytes:
        return b"TIMING"


_RESULTS = {"build_serialized_network": b"ENGINE", "get_timing_cache": _Serialized(b"")}


def fake_trt(version: str, parse_ok: bool = True) -> tuple[types.SimpleNamespace, list]:
    log: list = []
    major = parse_version(version)[0]
    trt = types.SimpleNamespace(
        __version__=version,
        BuilderFlag=_Flag11 if major >= 11 else _Flag10,
        NetworkDefinitionCreationFlag=_NetFlag8 if major < 10 else _NetFlag10,
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"),
        DeviceType=types.SimpleNamespace(DLA="DLA", GPU="GPU"),
        OnnxParser=lambda network, logger: _Parser(parse_ok),
    )

    class Builder(_Recorder):
        def __init__(self, logger: Any) -> None:
            super().__init__(log, "builder")

    trt.Builder = Builder
    return trt, log


def _build(version: str, profile_name: str = "gpu-trt-fp16", onnx_float: str = "fp32", **kw):
    trt, log = fake_trt(version, **kw)
    profile = load_profile(REPO / "profiles" / f"{profile_name}.toml")
    plan = plan_build(version, profile.precision, onnx_float, dla=profile.dla_core >= 0)
    out = build_engine_bytes(trt, None, b"onnx", plan, profile, "input", (3, 32, 32), None)
    return plan, log, out, profile


def _calls(log: list, method: str) -> list[tuple]:
    return [args for _, m, args in log if m == method]


def test_parse_version() -> None:
    assert parse_version("10.3.0.30") == (10, 3, 0)
    assert parse_version("8.5.2") == (8, 5, 2)
    assert parse_version("11.0") == (11, 0, 0)
    assert parse_version("10.1.0rc1") == (10, 1, 0)


def test_trt10_fp16_uses_builder_flag() -> None:
    plan, log, (engine, cache), profile = _build("10.3.0.30")
    assert plan.network_flags == () and plan.builder_flags == ("FP16",) and plan.precision == "fp16"
    assert _calls(log, "create_network") == [(0,)]
    assert _calls(log, "set_flag") == [(_Flag10.FP16,)]
    assert _calls(log, "set_memory_pool_limit") == [("WORKSPACE", profile.workspace_mib << 20)]
    assert (engine, cache) == (b"ENGINE", b"TIMING")


def test_trt10_one_optimisation_profile_per_batch_size() -> None:
    _, log, _, profile = _build("10.3.0")
    shapes = _calls(log, "set_shape")
    assert [s[1] for s in shapes] == [(b, 3, 32, 32) for b in profile.batch_sizes]
    assert all(s[0] == "input" and s[1] == s[2] == s[3] for s in shapes)
    assert len(_calls(log, "add_optimization_profile")) == len(profile.batch_sizes)
    assert _calls(log, "create_timing_cache") == [(b"",)]


def test_trt11_is_strongly_typed_and_never_sets_precision_flags() -> None:
    plan, log, _, _ = _build("11.0.0")
    assert plan.network_flags == ("STRONGLY_TYPED",)
    assert _calls(log, "create_network") == [(1 << int(_NetFlag10.STRONGLY_TYPED),)]
    assert _calls(log, "set_flag") == []
    # an FP32 ONNX stays FP32 on 11: the plan says so instead of pretending
    assert plan.precision == "fp32"
    assert plan.notes and "TensorRT 11" in plan.notes[0] and "AutoCast" in plan.notes[0]


def test_trt11_fp16_onnx_gives_fp16_without_warning() -> None:
    plan, _, _, _ = _build("11.2.0", onnx_float="fp16")
    assert plan.precision == "fp16" and plan.notes == ()


def test_trt11_int8_needs_qdq() -> None:
    assert plan_build("11.0", "int8", "fp32", has_qdq=True).precision == "int8"
    no_qdq = plan_build("11.0", "int8", "fp32", has_qdq=False)
    assert no_qdq.precision == "fp32" and "Q/DQ" in no_qdq.notes[0] and not no_qdq.calibrate


def test_trt8_needs_explicit_batch() -> None:
    plan, log, _, _ = _build("8.5.2", profile_name="jetson-xavier-nx")
    assert plan.network_flags == ("EXPLICIT_BATCH",)
    assert _calls(log, "create_network") == [(1 << int(_NetFlag8.EXPLICIT_BATCH),)]


def test_trt10_int8_calibrates_unless_qdq() -> None:
    cal = plan_build("10.3", "int8", has_qdq=False)
    assert cal.builder_flags[:2] == ("INT8", "FP16") and cal.calibrate
    assert not plan_build("10.3", "int8", has_qdq=True).calibrate


def test_dla_sets_device_type_and_gpu_fallback(tmp_path: Path) -> None:
    text = (REPO / "profiles" / "jetson-agx-orin.toml").read_text().replace("dla_core = -1", "dla_core = 1")
    (tmp_path / "agx-dla.toml").write_text(text)
    trt, log = fake_trt("10.3.0")
    profile = load_profile(tmp_path / "agx-dla.toml")
    plan = plan_build("10.3.0", profile.precision, dla=True)
    build_engine_bytes(trt, None, b"onnx", plan, profile, "input", (3, 32, 32), b"OLD")
    assert "GPU_FALLBACK" in plan.builder_flags
    assert (_Flag10.GPU_FALLBACK,) in _calls(log, "set_flag")
    assert any(m == "set default_device_type" and a == ("DLA",) for _, m, a in log)
    assert any(m == "set DLA_core" and a == (1,) for _, m, a in log)
    assert _calls(log, "create_timing_cache") == [(b"OLD",)]


def test_missing_strongly_typed_flag_is_skipped() -> None:
    class OnlyExplicit(enum.IntEnum):
        EXPLICIT_BATCH = 0
    trt = types.SimpleNamespace(NetworkDefinitionCreationFlag=OnlyExplicit)
    assert network_flag_bits(trt, plan_build("11.0", "fp32")) == 0


def test_parser_errors_are_reported() -> None:
    with pytest.raises(RuntimeError, match="Unsupported operator Foo"):
        _build("10.3.0", parse_ok=False)


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


def test_timing_cache_key_is_per_device_and_version_not_per_model() -> None:
    k = timing_cache_key("10.3", "Orin", "fp16")
    assert k == timing_cache_key("10.3", "Orin", "fp16")
    assert k != timing_cache_key("10.4", "Orin", "fp16") != timing_cache_key("10.3", "AGX", "fp16")
    d = Path("RUN/engines/p")
    assert engine_file(d, "legr_0.50", "k1").name == "legr_0.50.k1.engine"
    assert timing_cache_file(d, k).parent == d


def test_missing_tensorrt_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    profile = load_profile(REPO / "profiles" / "jetson-orin-nano.toml")
    with pytest.raises(LegrError) as e:
        get_backend("tensorrt").check_available(profile)
    msg = str(e.value)
    assert "tensorrt" in msg and "legr_edge[trt]" in msg and "JetPack" in msg and "cpu-ort" in msg


def test_missing_pycuda_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3"))
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    profile = load_profile(REPO / "profiles" / "jetson-orin-nano.toml")
    with pytest.raises(LegrError, match="pycuda.*cpu-ort"):
        get_backend("tensorrt").check_available(profile)
