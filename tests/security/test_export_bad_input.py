"""python -m legr_edge.export on run directories that are broken or hostile.

Exit 1, one line, no traceback, and onnx/, data/eval.npz and every other file exactly
as before; no code shipped in the run runs.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from legr_edge.export import main
from tests.security.checks import fails_cleanly


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(tiny_run, dest)
    return dest


def _set_cell(run: Path, row: int, col: str, value: str) -> None:
    with open(run / "flops_table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[row][col] = value
    with open(run / "flops_table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _edit_json(path: Path, **change) -> None:
    data = json.loads(path.read_text())
    data.update(change)
    path.write_text(json.dumps(data))


def _evil_module(run: Path, marker: Path | None) -> None:
    """A model module shipped in the run: running it would leave ``marker``."""
    code = ((f"open({str(marker)!r}, 'w').write('ran')\n" if marker else "")
            + "def build(num_classes=10, in_chans=3):\n    raise SystemExit(0)\n")
    (run / "evil.py").write_text(code)
    pkg = run / "pkg"
    pkg.mkdir()
    (pkg / "mod.py").write_text(code)


def _all_archs(run: Path, **change) -> None:
    for d in (run / "models").iterdir():
        _edit_json(d / "arch.json", **change)


CASES = [
    ("eval-limit-0", lambda r, t: None, ["--eval-limit", "0"], "--eval-limit must be >= 1"),
    ("opset-5", lambda r, t: None, ["--opset", "5"], "--opset must be between"),
    ("name-climbs-out", lambda r, t: _set_cell(r, 1, "name", "../../x"), [], "not a plain name"),
    ("path-climbs-out", lambda r, t: _set_cell(r, 1, "path", "../../"), [], "leads outside"),
    ("path-symlink-out", lambda r, t: ((r / "models" / "out").symlink_to(t),
                                       _set_cell(r, 1, "path", "models/out")), [], "leads outside"),
    ("onnx-dir-symlink-out", lambda r, t: (shutil.rmtree(r / "onnx"), (r / "onnx").symlink_to(t)), [],
     "leads outside"),
    ("config-missing", lambda r, t: (r / "config.json").unlink(), [], "missing"),
    ("config-corrupt", lambda r, t: (r / "config.json").write_text("{"), [], "not valid JSON"),
    ("config-not-utf8", lambda r, t: (r / "config.json").write_bytes(b"\xff\xfe"), [], "not UTF-8"),
    ("config-a-list", lambda r, t: (r / "config.json").write_text("[]"), [], "expected a JSON object"),
    ("config-unknown-dataset", lambda r, t: _edit_json(r / "config.json", dataset="nope"), [],
     "unknown data set"),
    ("config-val-fraction-nan", lambda r, t: (r / "config.json").write_text(
        (r / "config.json").read_text().replace('"val_fraction": 0.1', '"val_fraction": NaN')), [],
     "not valid JSON"),
    ("dense-arch-corrupt", lambda r, t: (r / "models" / "dense" / "arch.json").write_text("{"), [],
     "not valid JSON"),
    ("dense-arch-nan-mean", lambda r, t: (r / "models" / "dense" / "arch.json").write_text(
        (r / "models" / "dense" / "arch.json").read_text().replace('"mean": [', '"mean": [1e999, ')), [],
     "finite numbers"),
    ("dense-arch-input-size", lambda r, t: _edit_json(r / "models" / "dense" / "arch.json",
                                                      input_size=[1, 0, 32]), [], "input_size"),
    ("all-weights-broken", lambda r, t: [(d / "weights.pt").write_bytes(b"x") for d in (r / "models").iterdir()],
     [], "no model of"),
    ("all-weights-nan", lambda r, t: [torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point()
                                                  else v for k, v in torch.load(d / "weights.pt").items()},
                                                 d / "weights.pt") for d in (r / "models").iterdir()],
     [], "NaN or inf"),
    ("arch-shape-grows", lambda r, t: [_grow(d / "arch.json") for d in (r / "models").iterdir()], [],
     "does not fit the dense shape"),
    ("arch-unknown-attr", lambda r, t: [_attr(d / "arch.json") for d in (r / "models").iterdir()], [],
     "is not a size"),
    ("untrusted-factory-file", lambda r, t: (_evil_module(r, t / "ran"), _all_archs(r, model="evil:build")),
     [], "--trust-run-code"),
    ("untrusted-factory-namespace", lambda r, t: (_evil_module(r, t / "ran"),
                                                  _all_archs(r, model="run.pkg.mod:build")),
     [], "--trust-run-code"),
    ("malformed-model-string", lambda r, t: _all_archs(r, model="os:system('x')"), [], "package.module:factory"),
    ("unregistered-name", lambda r, t: _all_archs(r, model="resnet9000"), [], "unknown model"),
    ("trusted-factory-exits-0", lambda r, t: (_evil_module(r, None),
                                              _all_archs(r, model="run.pkg.mod:build")),
     ["--model", "run.pkg.mod:build"], "SystemExit"),
]


def _grow(path: Path) -> None:
    arch = json.loads(path.read_text())
    first = next(iter(arch["modules"].values()))
    first["shapes"] = {k: [d * 1000 for d in v] for k, v in first["shapes"].items()}
    path.write_text(json.dumps(arch))


def _attr(path: Path) -> None:
    arch = json.loads(path.read_text())
    next(iter(arch["modules"].values()))["attrs"]["forward"] = 3
    path.write_text(json.dumps(arch))


@pytest.mark.parametrize("case,breaker,args,expect", CASES, ids=[c[0] for c in CASES])
def test_broken_run_fails_cleanly(case, breaker, args, expect, run, tmp_path, caplog, capsys, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    breaker(run, outside)
    import legr_edge
    monkeypatch.chdir(tmp_path)  # a run one stands next to: its folder is importable as a namespace
    monkeypatch.setattr(legr_edge, "_REMOVED_CWD", str(tmp_path))  # as under python -m from there
    fails_cleanly(main, [str(run), *args], tmp_path, expect, caplog, capsys)
    assert not (outside / "ran").exists(), "code shipped in the run directory ran"


def test_user_factory_trusted_on_the_command_line(run, tmp_path, monkeypatch):
    """--model names the factory: it is imported (from the current directory) and used."""
    import legr_edge
    (tmp_path / "mynets.py").write_text(
        "from legr_edge.models.registry import create_model\n"
        "def build(num_classes=10, **kw):\n    return create_model('resnet20', num_classes, kw['in_chans'])\n")
    _all_archs(run, model="mynets:build")
    monkeypatch.setattr(legr_edge, "_REMOVED_CWD", str(tmp_path))  # as under python -m from tmp_path
    assert main([str(run), "--eval-limit", "8"]) == 1  # not trusted
    assert main([str(run), "--eval-limit", "8", "--model", "mynets:build"]) == 0
    manifest = json.loads((run / "onnx" / "manifest.json").read_text())
    assert {m["status"] for m in manifest["models"]} == {"ok"}
    with np.load(run / "data" / "eval.npz") as z:
        assert len(z["labels"]) == 8


def test_one_bad_model_is_recorded_and_nothing_else_changes(run, tmp_path):
    """A NaN checkpoint fails its own model; the new files replace the old ones together."""
    state = torch.load(run / "models" / "legr_0.60" / "weights.pt")
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, run / "models" / "legr_0.60" / "weights.pt")
    assert main([str(run), "--eval-limit", "16"]) == 0
    manifest = json.loads((run / "onnx" / "manifest.json").read_text())
    status = {m["name"]: m["status"] for m in manifest["models"]}
    assert status == {"dense": "ok", "legr_0.60": "failed", "legr_0.40": "ok"}
    assert not (run / "onnx" / "legr_0.60.onnx").exists()  # the old file went with the old folder
    assert not [p for p in run.iterdir() if p.name.startswith(".export-")]
