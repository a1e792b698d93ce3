"""python -m legr_edge.pick on latency tables that are broken or hostile: exit 1, one line,
no traceback, nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest

from legr_edge import pick
from legr_edge.device.results import CSV_COLUMNS
from legr_edge.io import write_csv
from tests.security.checks import fails_cleanly


def _table(tmp_path: Path, **change) -> Path:
    rows = [{"name": n, "deployed_top1": t, "batch_size": 1, "status": "ok", "latency_ms_median": m,
             "latency_ms_p90": m, "latency_ms_p99": m, "onnx_file": f"onnx/{n}.onnx",
             "model_dir": f"models/{n}"} for n, t, m in (("dense", 93.0, 4.0), ("legr_0.50", 90.0, 1.5))]
    rows[1].update(change)
    path = tmp_path / "run" / "latency_p.csv"
    write_csv(path, rows, CSV_COLUMNS)
    return path


ROW_CASES = [
    ("latency-nan", {"latency_ms_median": "nan"}, "not a finite number"),
    ("latency-inf", {"latency_ms_median": "inf"}, "not a finite number"),
    ("latency-negative", {"latency_ms_median": -1.0}, "outside"),
    ("latency-zero", {"latency_ms_median": 0.0}, "not positive"),
    ("latency-text", {"latency_ms_median": "fast"}, "is not a number"),
    ("top1-250", {"deployed_top1": 250.0}, "outside [0.0, 100.0]"),
    ("top1-negative", {"deployed_top1": -3.0}, "outside"),
    ("top1-nan", {"deployed_top1": "nan"}, "not a finite number"),
    ("name-path", {"name": "../../x"}, "not a plain name"),
    ("onnx-file-outside", {"onnx_file": "../../../etc/passwd"}, "leads outside"),
    ("model-dir-absolute", {"model_dir": "/etc"}, "absolute"),
    ("engine-outside", {"engine_path": "../elsewhere.engine"}, "leads outside"),
]


@pytest.mark.parametrize("case,change,expect", ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_nonsense_rows(case, change, expect, tmp_path, caplog, capsys):
    table = _table(tmp_path, **change)
    fails_cleanly(pick.main, [str(table), "--max-latency-ms", "2"], tmp_path, expect, caplog, capsys)


def _raw(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "latency_p.csv"
    path.write_bytes(data)
    return path


FILE_CASES = [
    ("not-utf8", lambda t: _raw(t, b"name,status\n\xff\xfe,ok\n"), "not UTF-8"),
    ("huge-field", lambda t: _raw(t, b"name,status\n\"" + b"x" * 200_000 + b"\",ok\n"), "malformed CSV"),
    ("empty", lambda t: _raw(t, b""), "empty latency table"),
    ("missing-columns", lambda t: _raw(t, b"name,status\ndense,ok\n"), "missing column"),
    ("no-such-file", lambda t: t / "nope.csv", "no such latency table"),
    ("a-directory", lambda t: t, "no such latency table"),
]


@pytest.mark.parametrize("case,make,expect", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_broken_tables(case, make, expect, tmp_path, caplog, capsys):
    table = make(tmp_path)
    fails_cleanly(pick.main, [str(table), "--min-top1", "50"], tmp_path, expect, caplog, capsys)


ARG_CASES = [
    ("budget-nan", ["--max-latency-ms", "nan"], "positive number"),
    ("budget-negative", ["--max-latency-ms", "-1"], "positive number"),
    ("floor-200", ["--min-top1", "200"], "between 0 and 100"),
    ("floor-text", ["--min-top1", "ninety"], "must be a number"),
    ("batch-text", ["--min-top1", "1", "--batch-size", "x"], "must be an integer"),
    ("batch-unmeasured", ["--min-top1", "1", "--batch-size", "64"], "was not measured"),
    ("no-constraint", [], "give --max-latency-ms"),
]


@pytest.mark.parametrize("case,args,expect", ARG_CASES, ids=[c[0] for c in ARG_CASES])
def test_bad_arguments(case, args, expect, tmp_path, caplog, capsys):
    table = _table(tmp_path)
    fails_cleanly(pick.main, [str(table), *args], tmp_path, expect, caplog, capsys)


def test_usage_error_keeps_argparse_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        pick.main([str(_table(tmp_path)), "--percentile", "42"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        pick.main(["--help"])
    assert "2    usage error" in capsys.readouterr().out
