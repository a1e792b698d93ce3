"""python -m legr_edge.search with bad or hostile input: exit 1, one line, no traceback, and
--out exactly as before (no config.json written, so the corrected command is not refused)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import legr_edge
from legr_edge.search import main
from tests.helpers import TINY_SEARCH
from tests.security.checks import fails_cleanly

FAST = ["--preset", "smoke", "--no-export"]


@pytest.fixture
def user_dir(tmp_path, monkeypatch) -> Path:
    """A folder of the user's model modules, searched as python -m searches the current one."""
    d = tmp_path / "user"
    d.mkdir()
    monkeypatch.setattr(legr_edge, "_REMOVED_CWD", str(d))
    return d


ARG_CASES = [
    ("model-malformed", ["--model", "a b:c"], "--model"),
    ("model-code", ["--model", "os:system('rm -rf x')"], "--model"),
    ("model-two-colons", ["--model", "a:b:c"], "--model"),
    ("model-unknown", ["--model", "resnet9000"], "unknown model"),
    ("model-no-module", ["--model", "no_such_module_xyz:build"], "cannot import model module"),
    ("pretrain-lr-nan", ["--pretrain-lr", "nan"], "--pretrain-lr"),
    ("tau-lr-inf", ["--tau-lr", "inf"], "--tau-lr"),
    ("finetune-lr-negative", ["--finetune-lr", "-0.1"], "--finetune-lr"),
    ("seed-negative", ["--seed", "-1"], "--seed"),
    ("seed-huge", ["--seed", str(2 ** 40)], "--seed"),
    ("min-fraction-1.5", ["--min-fraction", "1.5"], "--min-fraction"),
    ("min-fraction-nan", ["--min-fraction", "nan"], "--min-fraction"),
    ("min-channels-0", ["--min-channels", "0"], "--min-channels"),
    ("targets-same-name", ["--targets", "0.501,0.504"], "legr_0.50"),
    ("targets-nan", ["--targets", "nan"], "--targets"),
    ("val-fraction-nan", ["--val-fraction", "nan"], "--val-fraction"),
    ("input-size-0", ["--input-size", "0"], "--input-size"),
    ("opset-99", ["--opset", "99"], "--opset"),
    ("dataset-unknown", ["--dataset", "mnist9"], "unknown data set"),
    ("imagefolder-no-dir", ["--dataset", "imagefolder"], "imagefolder"),
    ("profile-missing", ["--profile", "no-such-profile"], "no-such-profile"),
]


@pytest.mark.parametrize("case,args,expect", ARG_CASES, ids=[c[0] for c in ARG_CASES])
def test_bad_arguments(case, args, expect, tmp_path, caplog, capsys):
    out = tmp_path / "out"
    fails_cleanly(main, [*FAST, *args, "--out", str(out)], tmp_path, expect, caplog, capsys)
    assert not out.exists()


MODULES = {
    "syntax": ("def build(:\n", "SyntaxError"),
    "raises_on_import": ("raise RuntimeError('no GPU here')\n", "no GPU here"),
    "exits_on_import": ("import sys\nsys.exit(0)\n", "SystemExit"),
    "factory_exits_0": ("def build(num_classes=10, in_chans=3):\n    raise SystemExit(0)\n", "SystemExit"),
    "factory_raises": ("def build(**kw):\n    raise ValueError('bad width')\n", "bad width"),
    "not_callable": ("build = 3\n", "no callable"),
    "wrong_output": ("import torch.nn as nn\ndef build(**kw):\n    return nn.Sequential(nn.Flatten())\n",
                     "does not match"),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_broken_user_models(name, user_dir, tmp_path, caplog, capsys):
    code, expect = MODULES[name]
    module = f"usermod_{name}"
    (user_dir / f"{module}.py").write_text(code)
    out = tmp_path / "out"
    fails_cleanly(main, [*FAST, "--model", f"{module}:build", "--out", str(out)], tmp_path, expect,
                  caplog, capsys)
    assert not out.exists()


def test_out_is_a_file(tmp_path, caplog, capsys):
    (tmp_path / "out").write_text("my notes")
    fails_cleanly(main, [*FAST, "--out", str(tmp_path / "out")], tmp_path, "not a directory", caplog, capsys)


def test_out_below_a_file(tmp_path, caplog, capsys):
    (tmp_path / "f").write_text("x")
    fails_cleanly(main, [*FAST, "--out", str(tmp_path / "f" / "run")], tmp_path, "not a directory",
                  caplog, capsys)


def test_out_not_writable(tmp_path, caplog, capsys, monkeypatch):
    import os
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
    fails_cleanly(main, [*FAST, "--out", str(tmp_path / "run")], tmp_path, "not writable", caplog, capsys)


def test_resume_into_a_folder_that_never_held_a_run(tmp_path, caplog, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    fails_cleanly(main, [*FAST, "--out", str(out), "--resume"], tmp_path, "never held a run", caplog, capsys)


@pytest.mark.parametrize("content,expect", [("{", "not valid JSON"), ("[1]", "expected a JSON object"),
                                            (b"\xff", "not UTF-8")], ids=["corrupt", "list", "not-utf8"])
def test_resume_with_broken_config(content, expect, tmp_path, caplog, capsys):
    out = tmp_path / "run"
    out.mkdir()
    path = out / "config.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    fails_cleanly(main, [*FAST, "--out", str(out), "--resume"], tmp_path, expect, caplog, capsys)


def test_checkpoint_missing(tmp_path, caplog, capsys):
    fails_cleanly(main, [*FAST, "--checkpoint", str(tmp_path / "no.pt"), "--out", str(tmp_path / "o")],
                  tmp_path, "not found", caplog, capsys)


def test_checkpoint_with_nan_weights(tmp_path, caplog, capsys):
    from legr_edge.models.registry import create_model
    state = create_model("resnet20", 10, 1).state_dict()
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, tmp_path / "nan.pt")
    fails_cleanly(main, [*FAST, "--checkpoint", str(tmp_path / "nan.pt"), "--out", str(tmp_path / "o")],
                  tmp_path, "NaN or inf", caplog, capsys)


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    dest = tmp_path / "tiny"
    shutil.copytree(tiny_run, dest)
    return dest


@pytest.mark.parametrize("file,content,expect", [
    ("ranking.json", "{", "not valid JSON"),
    ("models/legr_0.60/metrics.json", "nope", "not valid JSON"),
    ("models/dense/arch.json", "[]", "expected a JSON object"),
], ids=["ranking", "member-metrics", "dense-arch"])
def test_resume_with_corrupt_run_files(file, content, expect, run_copy, tmp_path, caplog, capsys):
    (run_copy / file).write_text(content)
    fails_cleanly(main, [*TINY_SEARCH, "--out", str(run_copy), "--resume"], tmp_path, expect, caplog, capsys)


def test_factory_gets_in_chans_through_kwargs(user_dir):
    """def build(num_classes=10, **kw) receives in_chans (a 3-channel default fails on 1-channel digits)."""
    from legr_edge.models.registry import create_model
    (user_dir / "kwnet.py").write_text(
        "from legr_edge.models.registry import create_model\n"
        "def build(num_classes=10, **kw):\n    return create_model('resnet20', num_classes, kw['in_chans'])\n")
    model = create_model("kwnet:build", 10, 1)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_run_directory_factory_needs_trust(user_dir):
    from legr_edge.errors import LegrError
    from legr_edge.models.registry import create_model, trust_scope
    (user_dir / "marker_mod.py").write_text(f"open({str(user_dir / 'ran')!r}, 'w')\ndef build(**kw): pass\n")
    with pytest.raises(LegrError, match="--trust-run-code"):
        create_model("marker_mod:build", source="run/models/dense/arch.json")
    assert not (user_dir / "ran").exists()
    with trust_scope(["marker_mod:build"]):
        with pytest.raises(LegrError, match="returned NoneType, not a torch.nn.Module"):
            create_model("marker_mod:build", source="run/models/dense/arch.json")
    assert (user_dir / "ran").exists()  # trusted: imported
    with pytest.raises(LegrError, match="--trust-run-code"):  # the trust ended with the scope
        create_model("marker_mod:build", source="run/models/dense/arch.json")


def test_input_size_and_registry_normalisation_for_imagefolder(tmp_path):
    """--input-size reaches the imagefolder loader; a registered model's mean/std are used."""
    from PIL import Image
    from legr_edge.config import resolve
    from legr_edge.models.registry import model_config
    from legr_edge.workflow import load_data
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (40, 30), (i * 20, 0, 0)).save(d / f"{i}.png")
    cfg = resolve({"model": "resnet20", "dataset": "imagefolder", "data_dir": str(tmp_path),
                   "input_size": (24, 20), "val_fraction": 0.3})
    data = load_data(cfg)
    assert data.info.image_size == (24, 20)
    assert tuple(data.info.mean) == tuple(model_config("resnet20").mean)
