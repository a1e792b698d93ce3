"""Search configuration: presets, the device profile's round_to, explicit flags win."""
from __future__ import annotations

import dataclasses

import pytest

from legr_edge.config import PRESETS, resolve
from legr_edge.device.profiles import load_profile
from legr_edge.errors import LegrError


def test_default_takes_round_to_from_the_default_profile():
    cfg = resolve({})
    assert cfg.profile == "cpu-ort"
    assert cfg.round_to == load_profile("cpu-ort").round_to


def test_profile_round_to_and_explicit_flag_wins(tmp_path):
    prof = tmp_path / "dev.toml"
    prof.write_text('backend = "onnxruntime"\nprecision = "fp32"\nround_to = 32\n')
    assert resolve({"profile": str(prof)}).round_to == 32
    assert resolve({"profile": str(prof), "round_to": 4}).round_to == 4


def test_preset_values_and_explicit_override():
    smoke = resolve({"preset": "smoke"})
    assert smoke.candidates == PRESETS["smoke"]["candidates"]
    assert resolve({"preset": "smoke", "candidates": 9}).candidates == 9
    paper = resolve({"preset": "paper"})
    assert (paper.population, paper.sample, paper.candidates, paper.tau) == (64, 16, 400, 200)
    thorough, default = resolve({"preset": "thorough"}), resolve({})
    assert thorough.tau == 50 and default.tau == 10
    assert dataclasses.replace(thorough, tau=10, preset="default") == default


def test_search_target_defaults_to_smallest_target():
    assert resolve({"targets": (0.7, 0.3, 0.5)}).effective_search_target == 0.3


@pytest.mark.parametrize("explicit,message", [
    ({"bogus": 1}, "unknown configuration keys: bogus"),
    ({"fitness": "f1"}, "--fitness"),
    ({"device": "tpu"}, "--device"),
    ({"population": 4, "sample": 8}, "--sample"),
    ({"profile": "no-such-profile"}, "no-such-profile"),
])
def test_bad_values_are_rejected(explicit, message):
    with pytest.raises(LegrError, match=message):
        resolve(explicit)


def test_scoring_paper_overrides_a_preset_but_not_its_budget():
    from legr_edge.config import resolve
    smoke = resolve({"preset": "smoke", "scoring": "paper"})
    assert (smoke.recal_batches, smoke.finalists, smoke.score_norm, smoke.group_reduce) == (0, 0, "none", "sum")
    assert smoke.tau == 2 and smoke.candidates == 6           # the smoke budget stays
    assert smoke.tau_batches == "per_candidate"               # the method's keys win
    assert resolve({"scoring": "paper"}).tau == 40
    paper = resolve({"preset": "paper"})
    assert paper.scoring == "paper" and paper.tau == 200 and paper.recal_batches == 0
    v2 = resolve({})
    assert (v2.scoring, v2.score_norm, v2.group_reduce, v2.tau, v2.tau_batches, v2.fitness) == (
        "v2", "zscore", "mean", 10, "common", "loss")
    assert resolve({"scoring": "paper", "recal_batches": 4}).recal_batches == 4   # explicit wins
