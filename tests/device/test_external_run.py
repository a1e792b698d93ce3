"""Profile a run directory written by the real workstation half (torch's dynamo exporter).

The fixture run of the other device tests is built with onnx.helper; this test takes
a run made by ``python -m legr_edge.search`` in another environment -- CI makes one in
its torch environment and points LEGR_EDGE_TEST_RUN at it before running the device
tests under Python 3.8 without torch -- and checks that this environment's onnx and
onnxruntime read what that exporter wrote (IR version, opset) and reproduce its accuracy.
"""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import onnx
import pytest

from legr_edge import profile as profile_cmd
from tests.device.fixture_run import write_fast_profile


@pytest.fixture
def external_run(tmp_path: Path) -> Path:
    src = os.environ.get("LEGR_EDGE_TEST_RUN")
    if not src:
        pytest.skip("LEGR_EDGE_TEST_RUN is not set (CI sets it to a run made by the torch "
                    "environment's `python -m legr_edge.search`)")
    dest = tmp_path / "run"
    shutil.copytree(src, dest)
    return dest


def test_profile_reads_the_exported_run(external_run: Path, tmp_path: Path) -> None:
    files = sorted((external_run / "onnx").glob("*.onnx"))
    assert files
    ir = {onnx.load(str(f), load_external_data=False).ir_version for f in files}
    profile = write_fast_profile(tmp_path)
    assert profile_cmd.main([str(external_run), "--profile", str(profile)]) == 0, \
        f"profile failed on ONNX IR {sorted(ir)}"
    with open(external_run / "latency_fast.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    for r in rows:  # the deployed FP32 model predicts as the table says torch did
        assert abs(float(r["deployed_top1"]) - float(r["test_top1"])) <= 1.0
