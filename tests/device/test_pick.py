"""`python -m legr_edge.pick` on a latency table written by the test."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from legr_edge import pick
from legr_edge.io import write_csv
from legr_edge.profile import CSV_COLUMNS

# name, deployed_top1, median, p99, status  (batch 1); batch 8 rows are 4x slower
MODELS = [
    ("dense", 93.0, 4.0, 6.0, "ok"),
    ("legr_0.80", 92.5, 3.0, 3.5, "ok"),
    ("legr_0.70", 92.5, 2.5, 5.0, "ok"),   # same top-1 as 0.80, faster median, worse p99
    ("legr_0.50", 90.0, 1.5, 1.8, "ok"),
    ("legr_0.30", 85.0, 1.0, 1.1, "ok"),
    ("legr_0.20", 99.0, 0.1, 0.1, "failed"),  # never chosen: failed
]


@pytest.fixture
def table(tmp_path: Path) -> Path:
    rows = []
    for bs, scale in ((1, 1.0), (8, 4.0)):
        for name, top1, med, p99, status in MODELS:
            ok = status == "ok"
            rows.append({
                "name": name, "deployed_top1": top1, "test_top1": top1 + 0.1,
                "batch_size": bs if ok else None, "status": status,
                "error": None if ok else "RuntimeError: boom",
                "latency_ms_median": med * scale if ok else None,
                "latency_ms_p90": (med + p99) / 2 * scale if ok else None,
                "latency_ms_p99": p99 * scale if ok else None,
                "throughput_ips": bs * 1000 / (med * scale), "speedup": 4.0 / med,
                "onnx_file": f"onnx/{name}.onnx", "model_dir": f"models/{name}",
                "engine_path": f"engines/p/{name}.k.engine" if name == "legr_0.50" else None,
                "profile": "p", "device": "Orin",
            })
    path = tmp_path / "run" / "latency_p.csv"
    write_csv(path, rows, CSV_COLUMNS)
    return path


def run(capsys, *args: str) -> tuple[int, str]:
    rc = pick.main([*map(str, args)])
    return rc, capsys.readouterr().out


def test_budget_picks_most_accurate_that_fits(table: Path, capsys) -> None:
    rc, out = run(capsys, table, "--max-latency-ms", "2")
    assert rc == 0
    assert out.startswith("legr_0.50:")
    assert f"onnx:   {table.parent / 'onnx' / 'legr_0.50.onnx'}" in out
    assert f"model:  {table.parent / 'models' / 'legr_0.50'}" in out
    assert "engines/p/legr_0.50.k.engine" in out


def test_ties_go_to_the_faster_model(table: Path, capsys) -> None:
    assert run(capsys, table, "--max-latency-ms", "3.2")[1].startswith("legr_0.70:")


def test_percentile_changes_the_choice(table: Path, capsys) -> None:
    # by p99 legr_0.70 (5.0 ms) no longer fits 3.6 ms but legr_0.80 (3.5 ms) does
    assert run(capsys, table, "--max-latency-ms", "3.6", "--percentile", "99")[1].startswith("legr_0.80:")


def test_batch_size_selects_rows(table: Path, capsys) -> None:
    assert run(capsys, table, "--max-latency-ms", "7", "--batch-size", "8")[1].startswith("legr_0.50:")


def test_min_top1_picks_fastest_reaching_it(table: Path, capsys) -> None:
    assert run(capsys, table, "--min-top1", "92")[1].startswith("legr_0.70:")


def test_both_constraints(table: Path, capsys) -> None:
    assert run(capsys, table, "--max-latency-ms", "5", "--min-top1", "92.6")[1].startswith("dense:")
    rc, _ = run(capsys, table, "--max-latency-ms", "2", "--min-top1", "92")
    assert rc == 1


def test_json_output(table: Path, capsys) -> None:
    rc, out = run(capsys, table, "--max-latency-ms", "2", "--json")
    d = json.loads(out)
    assert rc == 0 and d["fits"] is True and d["name"] == "legr_0.50"
    assert d["deployed_top1"] == 90.0 and d["latency_ms"] == 1.5 and d["batch_size"] == 1
    assert d["onnx_path"] == str(table.parent / "onnx" / "legr_0.50.onnx")
    assert d["engine_path"].endswith("legr_0.50.k.engine") and d["max_latency_ms"] == 2.0


def test_nothing_fits_names_the_closest(table: Path, capsys, caplog) -> None:
    rc, out = run(capsys, table, "--max-latency-ms", "0.5")
    assert rc == 1 and out == ""
    assert "closest is legr_0.30" in caplog.text and "1.000 ms" in caplog.text
    caplog.clear()
    rc, out = run(capsys, table, "--min-top1", "95", "--json")
    assert rc == 1 and "closest is dense" in caplog.text
    assert json.loads(out)["closest"]["name"] == "dense" and json.loads(out)["fits"] is False


@pytest.mark.parametrize("args, message", [
    (["--max-latency-ms", "-1"], "positive number"),
    (["--max-latency-ms", "0"], "positive number"),
    (["--max-latency-ms", "fast"], "must be a number"),
    (["--max-latency-ms", "nan"], "positive number"),
    (["--min-top1", "120"], "between 0 and 100"),
    ([], "--max-latency-ms and/or --min-top1"),
    (["--max-latency-ms", "2", "--batch-size", "3"], "not measured"),
])
def test_bad_arguments_exit_1(table: Path, capsys, caplog, args: list[str], message: str) -> None:
    rc, out = run(capsys, table, *args)
    assert rc == 1 and out == "" and message in caplog.text


def test_bad_table_exit_1(tmp_path: Path, capsys, caplog) -> None:
    bad = tmp_path / "latency_x.csv"
    bad.write_text("name,latency_ms_median\ndense,1.0\n")
    assert run(capsys, bad, "--max-latency-ms", "2")[0] == 1
    assert "missing column(s)" in caplog.text and "deployed_top1" in caplog.text
    assert run(capsys, tmp_path / "nope.csv", "--max-latency-ms", "2")[0] == 1
    assert "no such latency table" in caplog.text


def test_pick_reads_what_profile_wrote(run_dir: Path, fast_profile: Path, capsys) -> None:
    from legr_edge import profile as profile_cmd
    assert profile_cmd.main([str(run_dir), "--profile", str(fast_profile)]) == 0
    capsys.readouterr()
    rc, out = run(capsys, run_dir / "latency_fast.csv", "--max-latency-ms", "1000", "--json")
    d = json.loads(out)
    assert rc == 0 and d["name"] in {"dense", "legr_0.80", "legr_0.50"}
    assert Path(d["onnx_path"]).is_file() and Path(d["model_dir"]).is_dir()
    import csv
    with open(run_dir / "latency_fast.csv", newline="") as f:
        bs1 = [r for r in csv.DictReader(f) if r["batch_size"] == "1"]
    want = max(bs1, key=lambda r: (float(r["deployed_top1"]), -float(r["latency_ms_median"])))
    assert d["name"] == want["name"] and d["latency_ms"] == pytest.approx(float(want["latency_ms_median"]))
