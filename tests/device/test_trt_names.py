"""Every TensorRT name our code uses exists in the real release of each version branch.

The name lists (tests/device/trt_api/trt-*.txt) are extracted from the real bindings
wheels by make_name_lists.py. Here:

1. the committed lists equal what the script extracts from the wheels (cached outside
   the repository in ~/.cache/legr_edge/trt_wheels, downloaded with pip if absent; the
   test skips, saying so, when neither works);
2. every ``trt.X.Y`` chain in the TensorRT modules and every flag the build plan names
   for a version exists in that version's list;
3. the build and runtime halves run end to end on the strict fake of each version, which
   refuses any name missing from that version's list, and touch the runtime API that
   TensorRT < 8.5 lacks.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
from pathlib import Path
from typing import Set

import pytest

from legr_edge.device.backends import tensorrt as trt_backend
from legr_edge.device.backends import tensorrt_build
from legr_edge.device.backends.tensorrt_build import plan_build
from legr_edge.device.backends import ModelSpec
from legr_edge.device.fp16 import converter_available
from legr_edge.device.profiles import load_profile
from tests.device.fixture_run import HW
from tests.device.strict_trt import API_DIR, VERSIONS, FakeCuda, FakeTrt, TrtNames

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("make_name_lists", API_DIR / "make_name_lists.py")
make_name_lists = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_name_lists)

# Used only on branches where the plan can reach them; asserted below.
ONLY_BEFORE_11 = {"IInt8EntropyCalibrator2"}


@pytest.fixture(scope="module")
def wheels():
    out = {}
    cache = make_name_lists.cache_dir()
    for stem, req in make_name_lists.WHEELS.items():
        wheel = make_name_lists.wheel_path(req, cache) or make_name_lists.download(req, cache, 60)
        if wheel is None:
            pytest.skip(f"{req} is not in {cache} and pip could not download it (no network?): "
                        f"the committed name lists cannot be re-derived here")
        out[stem] = (req, wheel)
    return out


def test_committed_lists_are_what_the_real_wheels_contain(wheels) -> None:
    for stem, (req, wheel) in wheels.items():
        committed = (API_DIR / f"{stem}.txt").read_text()
        fresh = make_name_lists.render(stem, req, wheel, make_name_lists.names_from_wheel(wheel))
        assert committed == fresh, f"{stem}.txt is stale: re-run make_name_lists.py"


def test_lists_tell_the_releases_apart() -> None:
    n86, n103, n114 = (TrtNames(s) for s in ("8.6", "10.3", "11.4"))
    assert n86.has("EXPLICIT_BATCH") and not n86.has("STRONGLY_TYPED")
    assert n103.has("STRONGLY_TYPED") and n103.has("FP16")
    assert n114.has("execute_async_v3") and n114.has("STRONGLY_TYPED")
    assert not n114.has("EXPLICIT_BATCH") and not n114.has("FP16")


def _trt_chains(path: Path) -> Set[str]:
    """Attribute names in every ``trt.A.B`` chain of a module."""
    names: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        chain, cur = [], node
        while isinstance(cur, ast.Attribute):
            chain.append(cur.attr)
            cur = cur.value
        if chain and isinstance(cur, ast.Name) and cur.id == "trt":
            names.update(chain)
    return names


@pytest.mark.parametrize("stem", sorted(VERSIONS))
def test_every_static_name_and_planned_flag_exists(stem: str) -> None:
    names = TrtNames(stem)
    version = VERSIONS[stem]
    used = _trt_chains(Path(trt_backend.__file__)) | _trt_chains(Path(tensorrt_build.__file__))
    assert {"Builder", "OnnxParser", "Runtime", "BuilderFlag", "TensorIOMode", "nptype"} <= used
    if int(version.split(".")[0]) >= 11:
        assert not any(plan_build(version, p).calibrate for p in ("fp32", "fp16", "int8"))
        used -= ONLY_BEFORE_11
    for precision in ("fp32", "fp16", "int8"):
        for dla in (False, True):
            plan = plan_build(version, precision, dla=dla)
            used |= set(plan.network_flags) | set(plan.builder_flags)
    missing = sorted(n for n in used if not names.has(n))
    assert not missing, f"TensorRT {version} has no {missing}"


@pytest.mark.parametrize("stem", sorted(VERSIONS))
def test_build_and_runtime_run_on_the_strict_fake(stem: str, run_dir: Path, monkeypatch) -> None:
    trt = FakeTrt(stem, input_shape=(3, HW, HW))
    cuda = FakeCuda(trt)
    monkeypatch.setattr(trt_backend, "_import_trt", lambda profile: trt)
    monkeypatch.setattr(trt_backend, "_import_cuda", lambda profile: cuda)
    profile = dataclasses.replace(load_profile("gpu-trt-fp16"), batch_sizes=(1, 4))
    if stem == "11.4" and not converter_available():  # fp16 on 11.x needs the ONNX converter
        profile = dataclasses.replace(profile, precision="fp32")
    spec = ModelSpec("dense", run_dir / "onnx" / "dense.onnx", "0" * 64, input_shape=(3, HW, HW),
                     cache_dir=run_dir / "engines" / "p")
    import numpy as np
    with trt_backend.TensorRTBackend(spec, profile) as be:
        be.infer(np.zeros((4, 3, HW, HW), np.float32))
        be.prepare(1)
        be.step()
    runtime_api = {"execute_async_v3", "set_tensor_address", "set_input_shape", "num_io_tensors",
                   "get_tensor_shape", "get_tensor_name", "get_tensor_mode",
                   "set_optimization_profile_async", "deserialize_cuda_engine",
                   "build_serialized_network", "create_network", "create_builder_config"}
    assert runtime_api <= trt._used, runtime_api - trt._used
