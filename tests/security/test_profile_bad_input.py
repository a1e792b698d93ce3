"""python -m legr_edge.profile on run directories that are broken or hostile.

Whole-run problems: exit 1, one line, nothing written. Problems of one model (its ONNX
file or manifest entry): that model's row is failed with the reason, the others are
measured, and nothing outside the run is read or written.
"""
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
from tests.security.checks import fails_cleanly, tree_state


def _rows(run: Path) -> list:
    with open(run / "flops_table.csv", newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(run: Path, rows: list) -> None:
    with open(run / "flops_table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _set_cell(run: Path, row: int, col: str, value: str) -> None:
    rows = _rows(run)
    rows[row][col] = value
    _write_rows(run, rows)


def _manifest(run: Path) -> dict:
    return json.loads((run / "onnx" / "manifest.json").read_text())


def _edit_manifest(run: Path, fn) -> None:
    m = _manifest(run)
    fn(m)
    (run / "onnx" / "manifest.json").write_text(json.dumps(m))


def _eval(run: Path, **change) -> None:
    with np.load(run / "data" / "eval.npz") as z:
        d = {k: z[k] for k in z.files}
    d.update(change)
    (run / "data" / "eval.npz").unlink()
    np.savez(run / "data" / "eval.npz", **d)


# (id, how to break the run, expected fragment of the one error line)
RUN_CASES = [
    ("name-climbs-out", lambda r: _set_cell(r, 1, "name", "../../x"), "not a plain name"),
    ("name-with-slash", lambda r: _set_cell(r, 1, "name", "a/b"), "not a plain name"),
    ("path-climbs-out", lambda r: _set_cell(r, 1, "path", "../../etc"), "leads outside"),
    ("path-other-model", lambda r: _set_cell(r, 1, "path", "models/dense"), "expected 'models/legr_0.80'"),
    ("path-absolute", lambda r: _set_cell(r, 1, "path", "/etc"), "absolute"),
    ("macs-nan", lambda r: _set_cell(r, 1, "macs", "nan"), "not a finite number"),
    ("macs-negative", lambda r: _set_cell(r, 1, "macs", "-5"), "outside"),
    ("top1-250", lambda r: _set_cell(r, 1, "test_top1", "250"), "outside [0.0, 100.0]"),
    ("target-inf", lambda r: _set_cell(r, 1, "target", "inf"), "not a finite number"),
    ("target-text", lambda r: _set_cell(r, 1, "target", "half"), "is not a number"),
    ("duplicate-name", lambda r: _set_cell(r, 1, "name", "dense"), "duplicate"),
    ("missing-column", lambda r: _write_rows(r, [{k: v for k, v in x.items() if k != "macs"}
                                                 for x in _rows(r)]), "missing column"),
    ("table-not-utf8", lambda r: (r / "flops_table.csv").write_bytes(b"name,\xff\xfe\n"), "not UTF-8"),
    ("table-huge-field", lambda r: (r / "flops_table.csv").write_text(
        "name,target\n\"" + "x" * 200_000 + "\",1\n"), "malformed CSV"),
    ("table-extra-cells", lambda r: _append_cell(r), "more cells"),
    ("table-missing", lambda r: (r / "flops_table.csv").unlink(), "missing"),
    ("manifest-not-json", lambda r: (r / "onnx" / "manifest.json").write_text("{nope"), "not valid JSON"),
    ("manifest-nan-constant", lambda r: (r / "onnx" / "manifest.json").write_text(
        '{"models": [], "x": NaN}'), "not valid JSON"),
    ("manifest-not-utf8", lambda r: (r / "onnx" / "manifest.json").write_bytes(b"\xff{}"), "not UTF-8"),
    ("manifest-models-not-list", lambda r: (r / "onnx" / "manifest.json").write_text(
        '{"models": {"a": 1}}'), "not a valid manifest"),
    ("manifest-bad-name", lambda r: _edit_manifest(r, lambda m: m["models"][0].update(name="../x")),
     "not a plain name"),
    ("manifest-missing", lambda r: (r / "onnx" / "manifest.json").unlink(), "missing"),
    ("eval-missing", lambda r: (r / "data" / "eval.npz").unlink(), "missing"),
    ("eval-nan-mean", lambda r: _eval(r, mean=np.array([np.nan, 0.5, 0.5], np.float32)), "NaN or inf"),
    ("eval-inf-std", lambda r: _eval(r, std=np.array([np.inf, 0.5, 0.5], np.float32)), "NaN or inf"),
    ("eval-zero-std", lambda r: _eval(r, std=np.zeros(3, np.float32)), "must be > 0"),
    ("eval-float-labels", lambda r: _eval(r, labels=np.full(40, np.nan)), "integers"),
    ("eval-negative-labels", lambda r: _eval(r, labels=-np.ones(40, np.int64)), ">= 0"),
    ("eval-float-images", lambda r: _eval(r, images=np.zeros((40, 16, 16, 3), np.float32)), "uint8"),
    ("eval-empty", lambda r: _eval(r, images=np.zeros((0, 16, 16, 3), np.uint8),
                                   labels=np.zeros(0, np.int64)), "non-empty"),
    ("eval-missing-array", lambda r: np.savez(r / "data" / "eval.npz", images=np.zeros((1, 2, 2, 3), np.uint8)),
     "missing array"),
    ("eval-single-npy", lambda r: (r / "data" / "eval.npz").write_bytes(_npy_bytes()), "single array"),
    ("eval-object-array", lambda r: np.savez(r / "data" / "eval.npz", images=np.array([{}], dtype=object),
                                             labels=np.zeros(1), mean=np.zeros(3), std=np.ones(3)),
     "unreadable"),
    ("eval-garbage", lambda r: (r / "data" / "eval.npz").write_bytes(b"PK\x03\x04garbage"), "unreadable"),
]


def _append_cell(run: Path) -> None:
    lines = (run / "flops_table.csv").read_text().splitlines()
    lines[1] += ",extra"
    (run / "flops_table.csv").write_text("\n".join(lines) + "\n")


def _npy_bytes() -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 2), np.uint8))
    return buf.getvalue()


@pytest.mark.parametrize("case,breaker,expect", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_broken_run_fails_cleanly(case, breaker, expect, run_dir, fast_profile, tmp_path, caplog, capsys):
    breaker(run_dir)
    fails_cleanly(profile_cmd.main, [str(run_dir), "--profile", str(fast_profile)], tmp_path,
                  expect, caplog, capsys)


PROFILE_CASES = [
    ("warmup-nan", "warmup_s = 0.0", "warmup_s = nan", "warmup_s"),
    ("min-seconds-inf", "min_seconds = 0.0", "min_seconds = inf", "min_seconds"),
    ("min-seconds-negative", "min_seconds = 0.0", "min_seconds = -1.0", "min_seconds"),
    ("min-iters-huge", "min_iters = 3", "min_iters = 100000000000", "min_iters"),
]


@pytest.mark.parametrize("case,old,new,expect", PROFILE_CASES, ids=[c[0] for c in PROFILE_CASES])
def test_bad_profile_values(case, old, new, expect, run_dir, fast_profile, tmp_path, caplog, capsys):
    fast_profile.write_text(fast_profile.read_text().replace(old, new))
    fails_cleanly(profile_cmd.main, [str(run_dir), "--profile", str(fast_profile)], tmp_path,
                  expect, caplog, capsys)


def test_profile_toml_not_utf8(run_dir, fast_profile, tmp_path, caplog, capsys):
    fast_profile.write_bytes(b"description = \"\xff\"\n")
    fails_cleanly(profile_cmd.main, [str(run_dir), "--profile", str(fast_profile)], tmp_path,
                  "not UTF-8", caplog, capsys)


def test_models_flag_with_path(run_dir, fast_profile, tmp_path, caplog, capsys):
    fails_cleanly(profile_cmd.main, [str(run_dir), "--profile", str(fast_profile), "--models", "../x"],
                  tmp_path, "not a plain name", caplog, capsys)


def test_run_is_a_file(fast_profile, tmp_path, caplog, capsys):
    (tmp_path / "run.txt").write_text("x")
    fails_cleanly(profile_cmd.main, [str(tmp_path / "run.txt"), "--profile", str(fast_profile)], tmp_path,
                  "not a directory", caplog, capsys)


def test_symlinked_model_dir_outside(run_dir, fast_profile, tmp_path, caplog, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    import shutil
    shutil.rmtree(run_dir / "models" / "legr_0.80")
    (run_dir / "models" / "legr_0.80").symlink_to(outside)
    fails_cleanly(profile_cmd.main, [str(run_dir), "--profile", str(fast_profile)], tmp_path,
                  "leads outside", caplog, capsys)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_run(run_dir, fast_profile, tmp_path, caplog, capsys):
    run_dir.chmod(0o555)
    try:
        fails_cleanly(profile_cmd.main, [str(run_dir), "--profile", str(fast_profile)], tmp_path,
                      "not writable", caplog, capsys)
    finally:
        run_dir.chmod(0o755)


# ----- one model's problem: recorded in its row, others go on, nothing outside touched ------------
def _rows_by_name(run: Path, profile: str = "fast") -> dict:
    with open(run / f"latency_{profile}.csv", newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def test_manifest_file_outside_run_is_not_measured(run_dir, fast_profile, tmp_path):
    other = tmp_path / "other.onnx"
    other.write_bytes((run_dir / "onnx" / "dense.onnx").read_bytes())
    _edit_manifest(run_dir, lambda m: m["models"][1].update(file="../../other.onnx"))
    outside = tree_state(tmp_path)
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile)]) == 0
    rows = _rows_by_name(run_dir)
    assert rows["legr_0.80"]["status"] == "failed" and "not a plain" in rows["legr_0.80"]["error"]
    assert rows["dense"]["status"] == "ok"
    assert (tmp_path / "other.onnx").read_bytes() == (run_dir / "onnx" / "dense.onnx").read_bytes()
    assert outside["other.onnx"] == tree_state(tmp_path)["other.onnx"]


def test_manifest_entry_naming_another_models_file(run_dir, fast_profile):
    dense = _manifest(run_dir)["models"][0]
    _edit_manifest(run_dir, lambda m: m["models"][2].update(file="dense.onnx", sha256=dense["sha256"]))
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile)]) == 0
    row = _rows_by_name(run_dir)["legr_0.50"]
    assert row["status"] == "failed" and "is not legr_0.50.onnx" in row["error"]


def test_manifest_entry_without_sha256_is_not_trusted(run_dir, fast_profile):
    _edit_manifest(run_dir, lambda m: m["models"][1].pop("sha256"))
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile)]) == 0
    row = _rows_by_name(run_dir)["legr_0.80"]
    assert row["status"] == "failed" and "not trusted" in row["error"]


def test_onnx_symlink_outside_is_refused(run_dir, fast_profile, tmp_path):
    target = tmp_path / "another_run_model.onnx"
    target.write_bytes((run_dir / "onnx" / "legr_0.50.onnx").read_bytes())
    (run_dir / "onnx" / "legr_0.50.onnx").unlink()
    (run_dir / "onnx" / "legr_0.50.onnx").symlink_to(target)
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile)]) == 0
    row = _rows_by_name(run_dir)["legr_0.50"]
    assert row["status"] == "failed" and "leads outside" in row["error"]


# ----- an interrupted profile is not a complete measurement -------------------------------------------
def test_interrupted_rounds_are_incomplete_and_measured_again(run_dir, fast_profile, monkeypatch):
    real = profile_cmd.time_again

    def interrupt(ctx, row, rec, round_no):
        raise KeyboardInterrupt

    monkeypatch.setattr(profile_cmd, "time_again", interrupt)
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile), "--rounds", "3"]) == 130
    rows = _rows_by_name(run_dir)
    assert {r["status"] for r in rows.values()} == {"incomplete"}
    assert "timed 1 of 3 rounds" in rows["dense"]["warnings"]
    from legr_edge import pick
    assert pick.main([str(run_dir / "latency_fast.csv"), "--min-top1", "0"]) == 1  # nothing complete

    monkeypatch.setattr(profile_cmd, "time_again", real)
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile), "--rounds", "3"]) == 0
    report = json.loads((run_dir / "latency_fast.json").read_text())
    assert all(r["rounds_done"] == 3 for r in report["models"])  # measured again, not skipped
    assert {r["status"] for r in _rows_by_name(run_dir).values()} == {"ok"}


def test_forged_earlier_record_is_not_reused(run_dir, fast_profile):
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile), "--rounds", "1"]) == 0
    path = run_dir / "latency_fast.json"
    report = json.loads(path.read_text())
    report["models"][0]["batches"][0]["stats"]["median"] = -1.0
    path.write_text(json.dumps(report))
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile), "--rounds", "1"]) == 0
    with open(run_dir / "latency_fast.csv", newline="") as f:
        medians = [float(r["latency_ms_median"]) for r in csv.DictReader(f)]
    assert len(medians) == 6 and min(medians) > 0  # the forged -1 ms was measured again


# ----- a .py in the current directory never shadows a module --------------------------------------------
def test_module_in_current_directory_does_not_shadow(run_dir, tmp_path):
    marker = tmp_path / "ran"
    (run_dir / "csv.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(7)\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run([sys.executable, "-m", "legr_edge.pick", "nope.csv", "--min-top1", "1"],
                          cwd=run_dir, env=env, capture_output=True, text=True, timeout=120)
    assert not marker.exists(), proc.stderr
    assert proc.returncode == 1 and "no such latency table" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_unwritable_run_is_refused_before_measuring(run_dir, fast_profile, tmp_path, caplog, capsys,
                                                      monkeypatch):
    """Same as above where the tests run as root (which ignores permissions)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == run_dir else real(p, mode))
    fails_cleanly(profile_cmd.main, [str(run_dir), "--profile", str(fast_profile)], tmp_path,
                  "not writable", caplog, capsys)
