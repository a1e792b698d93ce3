"""Smoke tests of the benchmark helpers (not the benchmarks themselves): < 10 s."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import common
from benchmarks.latency_realization import recommend
from benchmarks.ranking_quality import uniform_scores
from benchmarks.search_cost import count_probes, naive_prune_to
from legr_edge.models.registry import create_model
from legr_edge.prune.coupling import build_coupling
from legr_edge.prune.cost import build_cost_model
from legr_edge.prune.ranking import Pruner, base_scores


def test_results_md_section_is_replaced_not_duplicated():
    text = common.RESULTS_HEADER
    text = common.replace_section(text, "x (quick)", "## x (quick)\n\nold\n")
    text = common.replace_section(text, "y (full)", "## y (full)\n\nother\n")
    text = common.replace_section(text, "x (quick)", "## x (quick)\n\nnew\n")
    assert text.count("<!-- BEGIN x (quick) -->") == 1 and "new" in text and "old" not in text
    assert "other" in text and text.index("x (quick)") < text.index("y (full)")


def test_uniform_scores_keep_the_same_fraction_of_every_group():
    group = np.repeat([0, 1], [4, 8])
    l2 = np.random.default_rng(0).random(12)
    s = uniform_scores(l2, group)
    keep = s >= 0.5
    assert keep[group == 0].sum() == 2 and keep[group == 1].sum() == 4
    assert np.argmax(np.where(group == 1, l2, -1)) == np.argmax(np.where(group == 1, s, -1))


def test_naive_loop_reaches_the_same_mask_as_prune_to():
    model = create_model("resnet20", 10, 1).eval()
    x = torch.zeros(1, 1, 32, 32)
    coupling = build_coupling(model, x)
    pruner = Pruner(coupling, build_cost_model(model, x, coupling))
    scores = base_scores(model, coupling)
    s = scores.transformed(*scores.identity())
    mask, _ = pruner.prune_to(s, 0.5)
    naive, removals, done = naive_prune_to(pruner, s, 0.5, None)
    assert done and removals == int((~mask).sum()) and np.array_equal(naive, mask)
    assert 1 < count_probes(pruner, s, 0.5) < 40


def test_round_to_recommendation_skips_settings_that_miss_targets():
    per = [{"round_to": 1, "mean_lat_ratio": 0.70, "targets_met": 6, "models": 6},
           {"round_to": 8, "mean_lat_ratio": 0.60, "targets_met": 6, "models": 6},
           {"round_to": 4, "mean_lat_ratio": 0.61, "targets_met": 6, "models": 6},
           {"round_to": 16, "mean_lat_ratio": 0.40, "targets_met": 3, "models": 6}]
    assert recommend(per, tie=0.02)["round_to"] == 4
    assert recommend(per, tie=0.0)["round_to"] == 8


def test_paired_confidence_interval():
    from benchmarks.ranking_quality import paired, paired_ci
    mean, lo, hi = paired_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and (lo, hi) == (pytest.approx(2.0 - 4.303 / 3 ** 0.5), pytest.approx(2.0 + 4.303 / 3 ** 0.5))
    rows = [{"setting": "s", "target": 0.3, "method": m, "seed": seed, "test_top1": v, "recal_top1": v}
            for m, vals in (("legr", (80, 82, 81)), ("uniform", (79, 80, 80)), ("l2", (70, 71, 72)))
            for seed, v in enumerate(vals)]
    [tuned, _] = paired(rows, ["legr", "uniform", "l2"])
    assert tuned["versus"] == "uniform" and tuned["diff_mean"] == pytest.approx(4 / 3) and tuned["n"] == 3


def test_latency_targets_quick_mode_end_to_end(tmp_path, monkeypatch):
    """The --quick benchmark, shrunk further (one target, a 2-width table, one round)."""
    from benchmarks import latency_targets

    sections = []
    monkeypatch.setattr(common, "update_results_md", lambda meta, body: sections.append(body))
    args = ["--quick", "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work"), "--targets", "0.5",
            "--rounds", "1", "--min-seconds", "0.01", "--table-max-widths", "2", "--table-configs", "2",
            "--table-layer-seconds", "0.001"]
    assert latency_targets.main(args) == 0
    rows = common.io.read_csv(tmp_path / "out" / "results.csv")
    assert [r["name"] for r in rows] == ["dense", "legr_0.50", "lat_0.50"]
    lat = rows[2]
    assert float(lat["target_ms"]) > 0 and float(lat["measured_ms"]) > 0
    assert float(lat["predicted_ms"]) <= float(lat["target_ms"]) * 1.01
    assert "held-out median err" in sections[0] and (tmp_path / "out" / "latency_targets.png").is_file()


def test_search_workers_extrapolation_and_time_to_fitness():
    from benchmarks.search_workers import extrapolate, time_to

    one = {"compute_ms": 100.0, "overhead_ms": 0.0, "driver_ms": 0.0}
    assert extrapolate(one, 8) == pytest.approx(8.0)                       # no overhead: linear
    slow = {"compute_ms": 100.0, "overhead_ms": 25.0, "driver_ms": 5.0}
    assert extrapolate(slow, 8) == pytest.approx(8 * 105 / 130)            # overhead eats a share
    assert extrapolate(slow, 1000) == pytest.approx(105 / 5)               # the driver's loop caps it
    rows = [{"t_s": 1.0, "best_so_far": -3.0}, {"t_s": 2.0, "best_so_far": -2.0}]
    assert time_to(rows, -2.5) == 2.0 and time_to(rows, -1.0) is None


def test_only_result_folders_below_benchmarks_are_linked_from_results_md(tmp_path):
    assert common.in_benchmarks(common.BENCH_DIR / "results" / "ranking_quality")
    assert not common.in_benchmarks(tmp_path / "scratch")


def test_a_legr_variant_with_its_own_floor_cuts_with_it():
    from types import SimpleNamespace

    from benchmarks.ranking_quality import variant_pruner
    model = create_model("resnet20", 10, 1).eval()
    x = torch.zeros(1, 1, 32, 32)
    coupling = build_coupling(model, x)
    pruner = Pruner(coupling, build_cost_model(model, x, coupling))
    bench = SimpleNamespace(pruner=pruner)
    assert variant_pruner(bench, "legr") is pruner and variant_pruner(bench, "uniform") is pruner
    floored = variant_pruner(bench, "legr_floor25")
    scores = base_scores(model, coupling)
    mask, _ = floored.prune_to(scores.transformed(*scores.identity()), 0.2)
    sizes = np.bincount(coupling.group_of_channel)
    kept = np.bincount(coupling.group_of_channel[mask], minlength=len(sizes))
    assert floored.min_fraction == 0.25 and np.all(kept >= np.ceil(0.25 * sizes))


def test_a_method_with_fewer_seeds_shows_its_n_in_the_table():
    from benchmarks.ranking_quality import table_rows

    def cell(method, n):
        return {"setting": "s/m", "target": 0.2, "method": method, "n": n, "test_top1_mean": 80.0,
                "test_top1_std": 1.0, "recal_top1_mean": 30.0, "macs_ratio": 0.2}
    summary = [cell("legr", 5), cell("uniform", 5), cell("legr_tau50", 4)]
    _, rows = table_rows(summary, [], ["legr", "legr_tau50", "uniform"])
    assert rows[0][2].endswith("(0.200)") and rows[0][4].endswith("(0.200)")
    assert rows[0][3].endswith("(0.200) n=4")


def _row(method, seed, top1, target=0.2):
    return {"setting": "s/m", "target": target, "method": method, "seed": seed, "test_top1": top1,
            "recal_top1": top1 / 3, "macs_ratio": target}


def test_each_ablation_is_paired_with_the_method_it_switches_a_change_off_from():
    from benchmarks.ranking_quality import ablation

    rows = [_row(m, s, v + s) for s in range(3)
            for m, v in (("legr", 81.0), ("legr_filter", 80.0), ("abl_no_stream", 78.0), ("abl_no_norm", 77.5))]
    got = {a["variant"]: a for a in ablation(rows)}
    # the ablation keeps the own-norm score it was measured with: no_stream is off legr_filter
    assert got["abl_no_stream"]["base"] == "legr_filter"
    assert got["abl_no_stream"]["test_top1_diff"] == pytest.approx(-2.0)
    assert got["abl_no_norm"]["base"] == "abl_no_stream"
    assert got["abl_no_norm"]["test_top1_diff"] == pytest.approx(-0.5)


def test_the_wide_streams_reference_is_not_one_of_the_other_methods():
    from benchmarks.ranking_quality import paired

    rows = [_row(m, s, v + 0.1 * s * (m == "legr")) for s in range(3)
            for m, v in (("legr", 80.0), ("uniform", 79.0), ("wide_streams", 81.0))]
    (p,) = [p for p in paired(rows, ["legr", "uniform", "wide_streams"]) if p["metric"] == "test_top1"]
    assert p["versus"] == "uniform" and p["diff_mean"] == pytest.approx(1.1)


def test_a_variant_reached_twice_counts_once():
    from benchmarks.ranking_quality import summarize, unique_rows

    rows = [_row("abl_no_stream", s, 70.0 + s) for s in range(5)] + [_row("abl_no_stream", s, 70.0 + s)
                                                                        for s in range(3)]
    (cell,) = summarize(unique_rows(rows))
    assert cell["n"] == 5 and cell["test_top1_mean"] == pytest.approx(72.0)


def test_variants_that_differ_only_in_the_final_choice_share_one_evolution(tmp_path):
    import json

    from benchmarks.ranking_quality import share_evolution

    done = tmp_path / "legr_no_target_seeds-abc-t0.2-seed0"
    done.mkdir()
    (done / "evolution_key").write_text("k1")
    (done / "search_state.json").write_text('{"history": [1, 2]}')
    (done / "search_log.csv").write_text("index\n0\n1\n")
    new = tmp_path / "legr-def-t0.2-seed0"
    new.mkdir()
    assert not share_evolution(tmp_path, new, "k2")                    # another evolution: not shared
    assert not (new / "search_state.json").exists()
    assert not share_evolution(tmp_path, new, "k1")                    # not finished (no ranking.json)
    (done / "ranking.json").write_text("{}")
    assert share_evolution(tmp_path, new, "k1")
    assert json.loads((new / "search_state.json").read_text()) == {"history": [1, 2]}
    assert (new / "search_log.csv").read_text() == "index\n0\n1\n"
    assert not share_evolution(tmp_path, new, "k1")                    # its own state is never replaced


def test_the_same_cut_has_the_same_digest_whichever_method_made_it():
    from benchmarks.ranking_quality import net_digest

    torch.manual_seed(0)
    a = create_model("resnet20", 10, 1)
    b = create_model("resnet20", 10, 1)
    b.load_state_dict(a.state_dict())
    assert net_digest(a) == net_digest(b)
    with torch.no_grad():
        b.conv1.weight[0, 0, 0, 0] += 1e-3
    assert net_digest(a) != net_digest(b)


def test_the_product_method_is_paired_with_each_of_its_variants_at_every_target():
    from benchmarks.ranking_quality import variant_pairs, variant_table

    rows = [_row(m, s, v + s, target=t) for s in range(3) for t in (0.5, 0.2)
            for m, v in (("legr", 80.0 + (t == 0.2)), ("legr_filter", 79.0), ("uniform", 85.0))]
    pairs = variant_pairs(rows, ["legr", "legr_filter", "uniform"])
    tuned = {p["target"]: p for p in pairs if p["metric"] == "test_top1"}
    assert {p["versus"] for p in pairs} == {"legr_filter"}  # uniform is an other method, not a variant
    assert tuned[0.5]["diff_mean"] == pytest.approx(1.0) and tuned[0.2]["diff_mean"] == pytest.approx(2.0)
    assert tuned[0.2]["n"] == 3
    header, table = variant_table(pairs)
    assert [r[:4] for r in table] == [["s/m", "0.50", "legr_filter", "3"], ["s/m", "0.20", "legr_filter", "3"]]
    assert table[1][4].startswith("+2.00")
