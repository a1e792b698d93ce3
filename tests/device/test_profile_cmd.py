"""End to end: `python -m legr_edge.profile` on the fixture run directory."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from legr_edge import profile as profile_cmd
from legr_edge.io import sha256_file
from tests.device.fixture_run import FAST_PROFILE, WIDTHS, load_weights, numpy_forward, preprocess

REPO = Path(__file__).resolve().parents[2]
REQUIRED = ["name", "macs", "macs_ratio", "params", "test_top1", "deployed_top1", "batch_size",
            "latency_ms_median", "latency_ms_p90", "latency_ms_p99", "throughput_ips", "speedup",
            "backend", "precision", "status", "error", "profile", "device"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _numpy_top1(run: Path, name: str) -> float:
    d = np.load(run / "data" / "eval.npz")
    x = preprocess(d["images"], d["mean"], d["std"])
    pred = numpy_forward(load_weights(run, name), x).argmax(1)
    return 100.0 * float((pred == d["labels"]).mean())


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_profile_writes_csv_json_png(run_dir: Path, fast_profile: Path, capsys) -> None:
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile)]) == 0
    rows = _rows(run_dir / "latency_fast.csv")
    assert set(REQUIRED) <= set(rows[0])
    assert [(r["name"], r["batch_size"]) for r in rows] == [
        (n, b) for n in WIDTHS for b in ("1", "4")]
    for r in rows:
        assert r["status"] == "ok" and r["error"] == ""
        assert float(r["latency_ms_median"]) > 0
        assert float(r["latency_ms_p99"]) >= float(r["latency_ms_median"]) - 1e-12
        assert float(r["throughput_ips"]) == pytest.approx(
            int(r["batch_size"]) * 1000 / float(r["latency_ms_median"]), rel=1e-3)
        assert r["backend"] == "onnxruntime" and r["precision"] == "fp32"
        assert r["providers"] == "CPUExecutionProvider" and r["profile"] == "fast"
        assert float(r["deployed_top1"]) == pytest.approx(_numpy_top1(run_dir, r["name"]), abs=1e-6)
        assert r["onnx_file"] == f"onnx/{r['name']}.onnx" and r["model_dir"] == f"models/{r['name']}"
    for r in rows:
        if r["name"] == "dense":
            assert float(r["speedup"]) == pytest.approx(1.0)
        dense = next(d for d in rows if d["name"] == "dense" and d["batch_size"] == r["batch_size"])
        assert float(r["speedup"]) == pytest.approx(
            float(dense["latency_ms_median"]) / float(r["latency_ms_median"]), rel=1e-3)

    report = json.loads((run_dir / "latency_fast.json").read_text())
    assert report["profile"]["name"] == "fast" and report["fingerprint"]["libraries"]["onnxruntime"]
    assert report["run"] == {"model": "tinynet", "dataset": "random16"}
    m = report["models"][0]
    assert m["name"] == "dense" and m["onnx_sha256"] == sha256_file(run_dir / "onnx" / "dense.onnx")
    assert [b["batch_size"] for b in m["batches"]] == [1, 4]
    assert len(m["batches"][0]["samples_ms"]) == m["batches"][0]["stats"]["n"] >= 3
    assert m["info"]["providers"] == ["CPUExecutionProvider"]

    png = run_dir / "latency_fast.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "legr_0.50" in out and "speedup" in out
    assert not list(run_dir.glob(".*.tmp"))  # atomic writers left nothing behind


def test_corrupt_onnx_fails_that_model_only(run_dir: Path, fast_profile: Path) -> None:
    bad = run_dir / "onnx" / "legr_0.80.onnx"
    bad.write_bytes(b"this is not a protobuf")
    manifest = json.loads((run_dir / "onnx" / "manifest.json").read_text())
    for m in manifest["models"]:
        if m["name"] == "legr_0.80":
            m["sha256"] = sha256_file(bad)  # hash matches: the content itself is broken
    (run_dir / "onnx" / "manifest.json").write_text(json.dumps(manifest))
    (run_dir / "onnx" / "legr_0.50.onnx").unlink()
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile)]) == 0
    rows = _rows(run_dir / "latency_fast.csv")
    status = {r["name"]: r for r in rows}
    assert status["legr_0.80"]["status"] == "failed" and status["legr_0.80"]["error"]
    assert status["legr_0.50"]["status"] == "failed" and "missing" in status["legr_0.50"]["error"]
    assert [r["status"] for r in rows if r["name"] == "dense"] == ["ok", "ok"]


def test_sha_mismatch_fails_that_model(run_dir: Path, fast_profile: Path) -> None:
    with open(run_dir / "onnx" / "legr_0.50.onnx", "ab") as f:
        f.write(b"\0")
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile)]) == 0
    row = next(r for r in _rows(run_dir / "latency_fast.csv") if r["name"] == "legr_0.50")
    assert row["status"] == "failed" and "does not match manifest" in row["error"]


def test_opset_newer_than_profile_fails_with_reason(run_dir: Path, tmp_path: Path) -> None:
    prof = tmp_path / "old.toml"
    prof.write_text(FAST_PROFILE.replace("opset = 18", "opset = 16"))
    assert profile_cmd.main([str(run_dir), "--profile", str(prof), "--models", "dense"]) == 0
    row = _rows(run_dir / "latency_old.csv")[0]
    assert row["status"] == "failed" and "opset 17" in row["error"] and "at most 16" in row["error"]


def test_skip_already_profiled_and_force(run_dir: Path, fast_profile: Path, caplog) -> None:
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile)]) == 0
    first = json.loads((run_dir / "latency_fast.json").read_text())
    caplog.clear()
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile)]) == 0
    second = json.loads((run_dir / "latency_fast.json").read_text())
    assert second["models"] == first["models"]  # reused, not re-measured
    assert sum("already measured" in r.message for r in caplog.records) == len(WIDTHS)

    # a changed ONNX is measured again even without --force
    manifest_path = run_dir / "onnx" / "manifest.json"
    dense = run_dir / "onnx" / "dense.onnx"
    dense.write_bytes((run_dir / "onnx" / "legr_0.50.onnx").read_bytes())
    manifest = json.loads(manifest_path.read_text())
    manifest["models"][0]["sha256"] = sha256_file(dense)
    manifest_path.write_text(json.dumps(manifest))
    caplog.clear()
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile)]) == 0
    third = json.loads((run_dir / "latency_fast.json").read_text())
    assert third["models"][0]["onnx_sha256"] == sha256_file(dense)
    assert third["models"][1:] == first["models"][1:]
    assert sum("already measured" in r.message for r in caplog.records) == len(WIDTHS) - 1

    caplog.clear()
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile), "--force",
                             "--models", "legr_0.50"]) == 0
    fourth = json.loads((run_dir / "latency_fast.json").read_text())
    assert fourth["models"][2]["measured_at"] >= third["models"][2]["measured_at"]
    assert fourth["models"][2]["batches"] != third["models"][2]["batches"]  # fresh samples
    assert fourth["models"][:2] == third["models"][:2]  # others kept from before
    assert len(_rows(run_dir / "latency_fast.csv")) == 2 * len(WIDTHS)


@pytest.mark.parametrize("damage, message", [
    (lambda run: (run / "flops_table.csv").unlink(), "flops_table.csv: missing"),
    (lambda run: (run / "flops_table.csv").write_text("name,macs\ndense,1\n"), "missing column"),
    (lambda run: (run / "onnx" / "manifest.json").unlink(), "manifest.json: missing"),
    (lambda run: (run / "data" / "eval.npz").unlink(), "eval.npz: missing"),
])
def test_bad_run_dir_is_one_clear_error(run_dir: Path, fast_profile: Path, caplog, damage,
                                        message: str) -> None:
    damage(run_dir)
    before = _snapshot(run_dir)
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile)]) == 1
    errors = [r.message for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0]
    assert _snapshot(run_dir) == before  # nothing written or damaged


def test_bad_profile_and_unknown_model_are_clear_errors(run_dir: Path, tmp_path: Path,
                                                       fast_profile: Path, caplog) -> None:
    bad = tmp_path / "typo.toml"
    bad.write_text(FAST_PROFILE + "min_iter = 5\n")
    before = _snapshot(run_dir)
    assert profile_cmd.main([str(run_dir), "--profile", str(bad)]) == 1
    assert "unknown key 'min_iter'" in caplog.text
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile),
                             "--models", "nope"]) == 1
    assert "nope not in" in caplog.text
    assert _snapshot(run_dir) == before


def _blocker(root: Path, *modules: str) -> Path:
    """A folder that, first on PYTHONPATH, makes ``import <module>`` fail as if not installed."""
    for m in modules:
        (root / m).mkdir(parents=True)
        (root / m / "__init__.py").write_text(f"raise ImportError('{m} is blocked in this test')\n")
    return root


def test_tensorrt_profile_without_tensorrt_from_outside_the_repo(run_dir: Path, tmp_path: Path) -> None:
    """A shipped TensorRT profile by bare name, no TensorRT, cwd outside the checkout:
    the profile is found, every row is failed with what to install, exit 0, no traceback."""
    blocker = _blocker(tmp_path / "blocked", "tensorrt", "torch")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "profiles").mkdir(parents=True)  # a stray profiles/ must not matter
    (elsewhere / "profiles" / "jetson-orin-nano.toml").write_text("garbage = \n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)])}
    r = subprocess.run([sys.executable, "-m", "legr_edge.profile", str(run_dir), "--profile",
                        "jetson-orin-nano"], cwd=elsewhere, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    rows = _rows(run_dir / "latency_jetson-orin-nano.csv")
    assert [row["name"] for row in rows] == list(WIDTHS)
    for row in rows:
        assert row["status"] == "failed" and row["profile"] == "jetson-orin-nano"
        assert "'tensorrt' cannot be imported" in row["error"] and "legr_edge[trt]" in row["error"]
    report = json.loads((run_dir / "latency_jetson-orin-nano.json").read_text())
    assert report["profile"]["source"] == "<shipped jetson-orin-nano>"


def test_help_shows_examples(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        profile_cmd.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "python -m legr_edge.profile runs/" in out and "--profile profiles/jetson-orin-nano.toml" in out


def test_profile_runs_with_torch_unimportable(run_dir: Path, fast_profile: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "no_torch"
    (blocker / "torch").mkdir(parents=True)
    (blocker / "torch" / "__init__.py").write_text("raise ImportError('torch is blocked in this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)])}
    code = ("import sys, legr_edge.profile as p; rc = p.main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(run_dir), "--profile", str(fast_profile)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (run_dir / "latency_fast.csv").is_file()
    assert all(row["status"] == "ok" for row in _rows(run_dir / "latency_fast.csv"))
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode != 0 and "blocked" in check.stderr  # the blocker really blocks


def test_missing_run_dir_says_so(tmp_path: Path, fast_profile: Path, caplog) -> None:
    assert profile_cmd.main([str(tmp_path / "nope"), "--profile", str(fast_profile)]) == 1
    assert "not a directory" in caplog.text
    assert not (tmp_path / "nope").exists()


def test_rounds_interleave_models_and_pool_samples(run_dir: Path, fast_profile: Path, monkeypatch) -> None:
    calls: list[str] = []
    real = profile_cmd._time_batch

    def spy(backend, profile, batch, name):
        calls.append(name)
        return real(backend, profile, batch, name)

    monkeypatch.setattr(profile_cmd, "_time_batch", spy)
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile), "--rounds", "3"]) == 0
    per_round = [n for n in WIDTHS for _ in ("1", "4")]           # every model, both batch sizes
    assert calls == per_round * 3                                  # round-robin, not model by model
    data = json.loads((run_dir / "latency_fast.json").read_text())
    for rec in data["models"]:
        assert rec["rounds"] == 3
        for b in rec["batches"]:
            # fast profile: min_iters 3 over 3 rounds -> at least 1 sample per round, pooled
            assert b["stats"]["n"] == len(b["samples_ms"]) >= 3
    rows = _rows(run_dir / "latency_fast.csv")
    assert all(int(r["n_iters"]) >= 3 for r in rows)


def test_rounds_must_be_positive(run_dir: Path, fast_profile: Path) -> None:
    with pytest.raises(SystemExit):
        profile_cmd.main([str(run_dir), "--profile", str(fast_profile), "--rounds", "0"])
