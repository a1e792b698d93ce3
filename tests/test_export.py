"""ONNX export: opset written as asked, BatchNorm folded, parity with torch, eval data."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from legr_edge.export import export_run, fold_batchnorm, main, normalize
from legr_edge.models.arch import load_model

from tests.helpers import make_concat_net, randomize_bn


def test_search_exported_every_model(tiny_run):
    manifest = json.loads((tiny_run / "onnx" / "manifest.json").read_text())
    assert [m["name"] for m in manifest["models"]] == ["dense", "legr_0.60", "legr_0.40"]
    for m in manifest["models"]:
        assert m["status"] == "ok" and m["parity_max_abs_err"] < 1e-3
        assert m["input_shape"][0] == "batch" and m["batchnorm_nodes"] == 0


@pytest.mark.parametrize("opset", [17, 18])
def test_opset_written_equals_asked_and_outputs_match(tiny_run, tmp_path, opset):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    export_run(run, opset=opset)
    data = np.load(run / "data" / "eval.npz")
    x = normalize(data["images"][:16], data["mean"], data["std"])
    for entry in json.loads((run / "onnx" / "manifest.json").read_text())["models"]:
        proto = onnx.load(str(run / "onnx" / entry["file"]))
        assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [opset]
        session = ort.InferenceSession(str(run / "onnx" / entry["file"]), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": x})[0]
        want = load_model(run / "models" / entry["name"])(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_eval_data_is_the_test_split(tiny_run):
    from legr_edge.data import load_dataset

    data = np.load(tiny_run / "data" / "eval.npz")
    test = load_dataset("digits").test
    images, labels = test.get(np.arange(len(test)))
    assert data["images"].dtype == np.uint8 and np.array_equal(data["images"], images)
    assert np.array_equal(data["labels"], labels)


def test_fold_batchnorm_keeps_function():
    model = randomize_bn(make_concat_net())
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_one_broken_model_does_not_stop_the_others(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "models" / "legr_0.60" / "weights.pt").write_bytes(b"broken")
    manifest = export_run(run)
    status = {m["name"]: m["status"] for m in manifest["models"]}
    assert status == {"dense": "ok", "legr_0.60": "failed", "legr_0.40": "ok"}
    assert "not a loadable weights file" in manifest["models"][1]["error"]


def test_bad_run_directory(tmp_path, caplog):
    assert main([str(tmp_path)]) == 1
    assert "flops_table.csv: missing" in caplog.text


def test_export_with_random_images_and_dynamic_batch(tiny_run, tmp_path):
    """Regression: a batch-1 example made torch.export specialize the dynamic batch axis."""
    from legr_edge.export import export_model

    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 1), dtype=np.uint8)
    meta = {"mean": np.array([0.3], np.float32), "std": np.array([0.3], np.float32)}
    info = export_model(tiny_run / "models" / "dense", tmp_path / "d.onnx", 18, images, meta)
    assert info["input_shape"][0] == "batch" and info["parity_max_abs_err"] < 1e-3
    session = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        out = session.run(None, {"input": np.zeros((batch, 1, 32, 32), np.float32)})[0]
        assert out.shape == (batch, 10)
