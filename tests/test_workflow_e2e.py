"""The whole workflow on a real search run: search -> export -> profile -> pick."""
from __future__ import annotations

import csv
import json
import shutil

import pytest

from legr_edge import pick, profile
from tests.device.fixture_run import write_fast_profile

TORCH_PROFILE = """\
description = "torch eager on the CPU, tiny timing"
backend = "torch"
device = "cpu"
precision = "fp32"
batch_sizes = [1]
threads = 1
warmup_s = 0.0
min_iters = 3
min_seconds = 0.0
opset = 18
round_to = 1
"""


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture()
def run(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


def test_profile_then_pick_on_a_search_run(run, tmp_path, capsys):
    prof = write_fast_profile(tmp_path)
    assert profile.main([str(run), "--profile", str(prof)]) == 0
    rows = _rows(run / "latency_fast.csv")
    flops = {r["name"]: r for r in _rows(run / "flops_table.csv")}
    assert {r["name"] for r in rows} == set(flops)
    for r in rows:
        assert r["status"] == "ok", r["error"]
        # The ONNX model classifies the exported test split exactly as torch did.
        assert float(r["deployed_top1"]) == pytest.approx(float(flops[r["name"]]["test_top1"]), abs=0.3)
        assert float(r["latency_ms_median"]) > 0
    dense_b1 = next(r for r in rows if r["name"] == "dense" and r["batch_size"] == "1")
    assert float(dense_b1["speedup"]) == pytest.approx(1.0)

    capsys.readouterr()
    assert pick.main([str(run / "latency_fast.csv"), "--max-latency-ms", "1000", "--json"]) == 0
    chosen = json.loads(capsys.readouterr().out)
    best = max(float(r["deployed_top1"]) for r in rows if r["batch_size"] == "1")
    assert float(chosen["deployed_top1"]) == best


def test_torch_backend_loads_the_real_models(run, tmp_path):
    prof = tmp_path / "torch-cpu.toml"
    prof.write_text(TORCH_PROFILE)
    assert profile.main([str(run), "--profile", str(prof)]) == 0
    rows = _rows(run / "latency_torch-cpu.csv")
    flops = {r["name"]: r for r in _rows(run / "flops_table.csv")}
    for r in rows:
        assert r["status"] == "ok", r["error"]
        assert float(r["deployed_top1"]) == pytest.approx(float(flops[r["name"]]["test_top1"]), abs=1e-6)
