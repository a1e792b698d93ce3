"""Latency as the search's cost: the torch side of the latency table (issue 8)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from legr_edge import latency_table
from legr_edge.device.profiles import load_profile
from legr_edge.errors import LegrError
from legr_edge.latency.table import FORMAT, LatencyTable, allowed_widths
from legr_edge.models import arch
from legr_edge.models.registry import create_model
from legr_edge.prune.coupling import build_coupling
from legr_edge.prune.cost import build_cost_model
from legr_edge.prune.latency_cost import (build_latency_cost, load_table, staircase_widen,
                                          target_note)
from legr_edge.prune.ranking import Pruner, base_scores
from tests.device.fixture_run import write_fast_profile
from tests.helpers import TINY_SEARCH

PROFILE = load_profile("cpu-ort")


def _resnet20():
    torch.manual_seed(0)
    model = create_model("resnet20", 10, 3).eval()
    example = torch.zeros(1, 3, 32, 32)
    coupling = build_coupling(model, example)
    return model, coupling, build_cost_model(model, example, coupling)


def synthetic_table(cost, per_mac_ms: float = 1e-6, overhead_ms: float = 0.05, round_to: int = 4,
                    step: dict | None = None, model: str = "resnet20") -> dict:
    """A table whose layer cost is exactly per_mac_ms * MACs (bilinear in cin, cout): the latency
    cost must then equal MACs scaled. ``step`` {layer: width} makes that layer's cost flat from
    ``width`` up to full width (a staircase)."""
    n = int(np.concatenate([cost.out_chan, cost.in_chan]).max()) + 1
    out, inp = cost.counts(np.ones(n, dtype=bool))
    layers, sigs = [], {}
    for name, coef, ci, co in zip(cost.names, cost.coef, inp.astype(int), out.astype(int)):
        ins = allowed_widths(ci, round_to, 0.1, 2) if ci > 3 else [int(ci)]
        outs = allowed_widths(co, round_to, 0.1, 2) if co > 10 else [int(co)]
        ms = [[per_mac_ms * coef * a * b for b in outs] for a in ins]
        if step and name in step:
            cap = step[name]
            ms = [[per_mac_ms * coef * a * min(b, cap) for b in outs] for a in ins]
        sigs[name] = {"in_widths": ins, "out_widths": outs, "ms": ms,
                      "noise_ms": np.zeros((len(ins), len(outs))).tolist(), "depthwise": False}
        layers.append({"name": name, "signature": name, "cin": int(ci), "cout": int(co)})
    return {"format": FORMAT, "batch_size": 1, "precision": "fp32", "backend": "onnxruntime",
            "run": {"model": model}, "profile": {"name": "cpu-ort"}, "layers": layers, "signatures": sigs,
            "noise_ms": 0.0, "calibration": {"kind": "constant", "scale": 1.0, "overhead_ms": overhead_ms}}


def test_latency_cost_is_the_table_sum_plus_overhead() -> None:
    _, coupling, cost = _resnet20()
    lat = build_latency_cost(cost, LatencyTable(synthetic_table(cost)))
    n = coupling.num_channels
    assert lat.dense_macs(n) == pytest.approx(1e-6 * cost.dense_macs(n) + 0.05)
    rng = np.random.default_rng(0)
    for _ in range(5):
        keep = np.zeros(n, dtype=bool)
        for g in coupling.groups:  # multiples of 4 per group, as the search produces
            k = int(rng.choice(allowed_widths(g.size, 4, 0.1, 2)))
            keep[np.flatnonzero(coupling.group_of_channel == coupling.groups.index(g))[:k]] = True
        assert lat.macs(keep) == pytest.approx(1e-6 * cost.macs(keep) + 0.05, rel=1e-9)


def test_pruner_meets_latency_targets() -> None:
    model, coupling, cost = _resnet20()
    lat = build_latency_cost(cost, LatencyTable(synthetic_table(cost, overhead_ms=0.2)))
    pruner = Pruner(coupling, lat, round_to=4)
    scores = base_scores(model, coupling)
    s = scores.transformed(*scores.identity())
    for target in (0.8, 0.6, 0.4):
        mask, ms = pruner.prune_to(s, target)
        assert ms <= target * pruner.dense_macs
        assert ms >= (target - 0.05) * pruner.dense_macs  # the block fill keeps it tight
        # with a fixed overhead, a latency fraction keeps fewer MACs than the same MAC fraction
        assert cost.macs(mask) < target * cost.dense_macs(coupling.num_channels)


def test_unreachable_target_names_the_closest_reachable_latency() -> None:
    model, coupling, cost = _resnet20()
    lat = build_latency_cost(cost, LatencyTable(synthetic_table(cost, overhead_ms=0.5)))
    pruner = Pruner(coupling, lat, round_to=4)
    scores = base_scores(model, coupling)
    mask, ms = pruner.prune_to(scores.transformed(*scores.identity()), 0.01)
    note = target_note("lat_0.01", 0.01, ms, pruner.dense_macs)
    assert note and f"closest reachable: {ms:.4f} ms" in note
    assert target_note("lat_0.50", 0.5, 0.4 * pruner.dense_macs, pruner.dense_macs) is None


def test_staircase_gives_back_free_channels() -> None:
    model, coupling, cost = _resnet20()
    # layer1.0.conv1's own output group costs nothing above 4 channels in both its layers
    flat = {"layer1.0.conv1": 4}
    table = synthetic_table(cost, step=flat)
    for l in table["layers"]:
        if l["name"] == "layer1.0.conv2":  # input side of that group: flat above 4 as well
            s = table["signatures"][l["name"]]
            s["ms"] = [[1e-6 * 9 * 32 * 32 * min(a, 4) * b for b in s["out_widths"]] for a in s["in_widths"]]
    table["noise_ms"] = 1e-9
    lat = build_latency_cost(cost, LatencyTable(table))
    # round_to 1: no block fill after the threshold search, which would take free blocks itself
    pruner = Pruner(coupling, lat, round_to=1)
    scores = base_scores(model, coupling)
    s = scores.transformed(*scores.identity())
    mask, ms = pruner.prune_to(s, 0.5)
    widened, given = staircase_widen(pruner, s, mask)
    g = next(i for i, grp in enumerate(coupling.groups)
             if any(m.name == "layer1.0.conv1" and m.is_out for m in grp.members))
    assert widened[coupling.group_of_channel == g].all()  # that group went to full width for free
    assert given == int(widened.sum() - mask.sum()) > 0
    assert lat.latency(widened) <= ms + 1e-9
    same, none = staircase_widen(Pruner(coupling, cost, round_to=1), s, mask)  # MAC cost: no-op
    assert none == 0 and (same == mask).all()


def test_table_for_another_network_is_refused() -> None:
    _, _, cost20 = _resnet20()
    torch.manual_seed(0)
    m32 = create_model("resnet32", 10, 3).eval()
    ex = torch.zeros(1, 3, 32, 32)
    cost32 = build_cost_model(m32, ex, build_coupling(m32, ex))
    with pytest.raises(LegrError, match="layer signatures do not match"):
        build_latency_cost(cost32, LatencyTable(synthetic_table(cost20), "r20.json"))
    wrong = synthetic_table(cost20)
    wrong["layers"][1]["cin"] = 32
    with pytest.raises(LegrError, match="layer1.0.conv1 \\(16->16 here, 32->16"):
        build_latency_cost(cost20, LatencyTable(wrong, "w.json"))


def test_table_for_another_model_or_profile_is_refused(tmp_path: Path) -> None:
    _, _, cost = _resnet20()
    path = tmp_path / "t.json"
    path.write_text(json.dumps(synthetic_table(cost, model="resnet56")))
    with pytest.raises(LegrError, match="built for model 'resnet56'"):
        load_table(str(path), PROFILE, "resnet20")
    data = synthetic_table(cost)
    data["batch_size"] = 8
    path.write_text(json.dumps(data))
    with pytest.raises(LegrError, match="batch size 8 != 1"):
        load_table(str(path), PROFILE, "resnet20")


# ----- on a real exported run: the device's table meets the workstation's layers ------------------
@pytest.fixture(scope="module")
def tiny_table(tiny_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("lat") / "run"
    shutil.copytree(tiny_run, run)
    prof = write_fast_profile(run.parent)
    args = [str(run), "--profile", str(prof), "--rounds", "1", "--layer-seconds", "0.001", "--max-widths", "2",
            "--configs", "2", "--e2e-seconds", "0.002", "--no-plot", "--round-to", "2"]
    assert latency_table.main(args) == 0
    return run, prof, run / "latency_table_fast.json"


def test_table_from_the_exported_onnx_matches_the_torch_layers(tiny_table) -> None:
    run, prof, path = tiny_table
    dense = arch.load_model(run / "models" / "dense")
    meta = arch.read_arch(run / "models" / "dense")
    example = torch.zeros(1, *meta["input_size"])
    coupling = build_coupling(dense, example)
    cost = build_cost_model(dense, example, coupling)
    table = load_table(str(path), load_profile(str(prof)), "resnet20")
    lat = build_latency_cost(cost, table)
    assert lat.dense_macs(coupling.num_channels) == pytest.approx(table.dense_ms())


def test_search_with_latency_targets_in_ms(tiny_table, tmp_path: Path) -> None:
    from legr_edge.search import main

    run, prof, path = tiny_table
    dense_ms = LatencyTable.load(path).dense_ms()
    want = round(0.7 * dense_ms, 4)
    out = tmp_path / "lat"
    args = [a for a in TINY_SEARCH if a not in ("--targets", "0.6,0.4")]
    assert main(args + ["--out", str(out), "--no-export", "--profile", str(prof), "--finetune-epochs", "0",
                        "--checkpoint", str(run / "models" / "dense" / "weights.pt"),
                        "--cost", "latency", "--latency-table", str(path), "--targets-ms", f"{want}"]) == 0
    with open(out / "flops_table.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"dense", f"lat_{want:g}ms"}
    assert float(rows["dense"]["predicted_ms"]) == pytest.approx(dense_ms, rel=1e-6)
    member = rows[f"lat_{want:g}ms"]
    assert float(member["target_ms"]) == pytest.approx(want, rel=1e-6)
    # within the target (plus the staircase's noise allowance)
    noise = LatencyTable.load(path).noise_ms * LatencyTable.load(path).scale
    assert float(member["predicted_ms"]) <= want + noise + 1e-9
    assert member["staircase_channels"] != ""


def test_latency_cost_needs_a_table() -> None:
    from legr_edge.config import resolve
    with pytest.raises(LegrError, match="--cost latency needs --latency-table"):
        resolve({"cost": "latency"})
    with pytest.raises(LegrError, match="--targets-ms needs --cost latency"):
        resolve({"targets_ms": (1.0,)})


def test_runs_made_before_the_latency_fields_still_resume(tmp_path: Path) -> None:
    from legr_edge.config import SearchConfig
    from legr_edge.workflow import _check_same_run

    old = SearchConfig().to_dict()
    for k in ("cost", "latency_table", "targets_ms", "staircase"):
        old.pop(k)
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(old))
    _check_same_run(saved, SearchConfig())  # missing keys count as their defaults
    with pytest.raises(LegrError, match="cost: 'macs' -> 'latency'"):
        _check_same_run(saved, SearchConfig(cost="latency", latency_table="t.json"))
