"""python -m legr_edge.search end to end: the output contract, resume, bad input."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from legr_edge import workflow
from legr_edge.models.arch import load_model
from legr_edge.search import main

from tests.helpers import TINY_SEARCH


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_directory_contract(tiny_run):
    for f in ("config.json", "ranking.json", "search_log.csv", "flops_table.csv", "tradeoff_flops.png",
              "search_state.json", "onnx/manifest.json", "data/eval.npz"):
        assert (tiny_run / f).is_file(), f
    table = _rows(tiny_run / "flops_table.csv")
    assert [r["name"] for r in table] == ["dense", "legr_0.60", "legr_0.40"]
    assert {"name", "target", "macs", "macs_ratio", "params", "val_top1", "test_top1", "path"} <= set(table[0])
    dense_macs = int(table[0]["macs"])
    for row in table[1:]:
        assert int(row["macs"]) <= float(row["target"]) * dense_macs
        assert float(row["macs_ratio"]) == pytest.approx(int(row["macs"]) / dense_macs, rel=1e-4)
        assert 0.0 <= float(row["test_top1"]) <= 100.0
        assert int(row["params"]) < int(table[0]["params"])
    log = _rows(tiny_run / "search_log.csv")
    assert [int(r["index"]) for r in log] == [0, 1, 2, 3]
    assert all(float(r["macs_ratio"]) <= 0.4 for r in log)           # searched at the smallest target
    ranking = json.loads((tiny_run / "ranking.json").read_text())
    assert ranking["best_fitness"] == pytest.approx(float(log[ranking["best_index"]]["fitness"]), rel=1e-5)
    assert len(ranking["layers"]) == 21 and {"name", "alpha", "kappa"} <= set(ranking["layers"][0])


def test_ranking_records_the_method_seeds_and_final_choice(tiny_run):
    ranking = json.loads((tiny_run / "ranking.json").read_text())
    assert (ranking["scoring"], ranking["score_norm"], ranking["group_reduce"]) == ("v2", "zscore", "mean")
    state = json.loads((tiny_run / "search_state.json").read_text())
    assert len(state["seeds"]) == 3                       # identity, the paper's rule, uniform
    assert state["history"][0]["alpha"] == [1.0] * 21 and state["history"][0]["kappa"] == [0.0] * 21
    final = {f["index"]: f for f in ranking["final"]}
    assert {0, 1, 2} <= set(final) and all(final[i]["seed"] for i in (0, 1, 2))
    # the winner is the best MEAN over fresh draws, not the best single search evaluation
    assert ranking["best_index"] == max(final.values(), key=lambda f: (f["mean"], -f["index"]))["index"]
    assert all(len(f["rescored"]) == 1 for f in final.values())   # the smoke preset: 1 fresh draw


def test_paper_scoring_runs_the_published_method(tiny_run, tmp_path):
    out = tmp_path / "paper"
    args = TINY_SEARCH + ["--out", str(out), "--no-export", "--scoring", "paper", "--finetune-epochs", "0",
                          "--checkpoint", str(tiny_run / "models" / "dense" / "weights.pt")]
    assert main(args) == 0
    ranking = json.loads((out / "ranking.json").read_text())
    assert (ranking["scoring"], ranking["score_norm"], ranking["group_reduce"]) == ("paper", "none", "sum")
    assert ranking["final"] == [] and ranking["settings"]["recal_batches"] == 0
    log = _rows(out / "search_log.csv")
    assert ranking["best_fitness"] == pytest.approx(max(float(r["fitness"]) for r in log), rel=1e-5)
    assert json.loads((out / "search_state.json").read_text())["seeds"] == []


def test_saved_models_reload_with_their_reported_accuracy(tiny_run):
    from legr_edge.data import load_dataset
    from legr_edge.train import evaluate

    data = load_dataset("digits")
    for row in _rows(tiny_run / "flops_table.csv"):
        model = load_model(tiny_run / row["path"])
        top1, _ = evaluate(model, data.test, data.info, torch.device("cpu"))
        assert top1 == pytest.approx(float(row["test_top1"]), abs=1e-6)  # CSV keeps 10 digits


def test_resume_after_interrupt_matches_uninterrupted_run(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    # Same dense weights as the reference run, without paying for pretraining again.
    args = TINY_SEARCH + ["--out", str(out), "--no-export",
                          "--checkpoint", str(tiny_run / "models" / "dense" / "weights.pt")]
    real = workflow.candidate_fitness

    def interrupt_at_third(ctx, k, alpha, kappa):
        if k == 2:
            raise KeyboardInterrupt
        return real(ctx, k, alpha, kappa)

    monkeypatch.setattr(workflow, "candidate_fitness", interrupt_at_third)
    assert main(args) == 130
    assert len(_rows(out / "search_log.csv")) == 2
    assert not (out / "ranking.json").exists()
    monkeypatch.setattr(workflow, "candidate_fitness", real)
    assert main(args + ["--resume"]) == 0
    a = json.loads((tiny_run / "ranking.json").read_text())
    b = json.loads((out / "ranking.json").read_text())
    assert [l["alpha"] for l in a["layers"]] == [l["alpha"] for l in b["layers"]]
    assert [l["kappa"] for l in a["layers"]] == [l["kappa"] for l in b["layers"]]
    assert a["best_fitness"] == b["best_fitness"]

    # Finished family members are not redone: a second resume fine-tunes nothing.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("models/*/weights.pt")}
    called = []
    monkeypatch.setattr(workflow, "fit", lambda *a, **k: called.append(1))
    assert main(args + ["--resume"]) == 0
    assert not called
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("models/*/weights.pt")}


def _fails(capsys_or_caplog, args, message):
    assert main(args) == 1
    assert message in capsys_or_caplog.text


@pytest.mark.parametrize("args,message", [
    (["--model", "resnet999"], "unknown model 'resnet999'"),
    (["--model", "nosuchpkg.mod:f"], "cannot import model module 'nosuchpkg.mod'"),
    (["--dataset", "mnist"], "unknown data set"),
    (["--dataset", "cifar10"], "--data-dir"),
    (["--targets", "0.5,1.5"], "--targets value must be in (0, 1]"),
    (["--targets", "0"], "--targets value must be in (0, 1]"),
    (["--preset", "huge"], "unknown preset"),
    (["--final-tau", "-1"], "--final-tau must be an integer >= 0, got -1"),
    (["--stream-seeds", "0.5,1.5"], "--stream-seeds values must be in (0, 1], got 1.5"),
    (["--stream-seeds", "0"], "--stream-seeds values must be in (0, 1], got 0.0"),
])
def test_bad_arguments_give_one_clear_message(tmp_path, caplog, args, message):
    _fails(caplog, TINY_SEARCH + ["--out", str(tmp_path / "r")] + args, message)


def test_missing_data_dir(tmp_path, caplog):
    _fails(caplog, TINY_SEARCH + ["--out", str(tmp_path / "r"), "--dataset", "cifar10",
                                  "--data-dir", str(tmp_path / "nope")], str(tmp_path / "nope"))


def test_checkpoint_that_does_not_fit(tmp_path, caplog):
    ckpt = tmp_path / "other.pt"
    torch.save({"conv1.weight": torch.zeros(3, 3, 3, 3)}, ckpt)
    _fails(caplog, TINY_SEARCH + ["--out", str(tmp_path / "r"), "--checkpoint", str(ckpt)],
           "checkpoint does not fit the model")


def test_corrupt_and_non_weights_checkpoints(tmp_path, caplog):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 10)
    _fails(caplog, TINY_SEARCH + ["--out", str(tmp_path / "r1"), "--checkpoint", str(corrupt)],
           "not a loadable weights file")
    module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), module)  # a pickled module: refused by weights_only
    _fails(caplog, TINY_SEARCH + ["--out", str(tmp_path / "r2"), "--checkpoint", str(module)],
           "not a loadable weights file")


def test_out_with_another_run_is_not_overwritten(tiny_run, caplog):
    before = (tiny_run / "flops_table.csv").read_bytes()
    _fails(caplog, TINY_SEARCH + ["--out", str(tiny_run)], "already holds a run")
    assert (tiny_run / "flops_table.csv").read_bytes() == before


def test_resume_with_other_settings_is_refused(tiny_run, caplog):
    _fails(caplog, TINY_SEARCH + ["--out", str(tiny_run), "--resume", "--seed", "5"], "seed")


def test_user_model_from_factory(tmp_path):
    out = tmp_path / "user"
    args = TINY_SEARCH + ["--model", "tests.helpers:make_concat_net", "--out", str(out), "--no-export",
                          "--targets", "0.5"]
    assert main(args) == 0
    table = _rows(out / "flops_table.csv")
    assert int(table[1]["macs"]) <= 0.5 * int(table[0]["macs"])
    model = load_model(out / table[1]["path"])
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--targets" in text and "python -m legr_edge.search --preset smoke" in text


def test_same_seed_gives_the_same_ranking_and_family(tiny_run, tmp_path):
    """A second run from scratch (pretraining included) reproduces the first one exactly."""
    out = tmp_path / "again"
    assert main(TINY_SEARCH + ["--out", str(out), "--no-export"]) == 0
    a = json.loads((tiny_run / "ranking.json").read_text())
    b = json.loads((out / "ranking.json").read_text())
    assert a["layers"] == b["layers"] and a["best_fitness"] == b["best_fitness"]
    dense_a = torch.load(tiny_run / "models" / "dense" / "weights.pt", weights_only=True)
    dense_b = torch.load(out / "models" / "dense" / "weights.pt", weights_only=True)
    assert all(torch.equal(dense_a[k], dense_b[k]) for k in dense_a)
    assert _rows(tiny_run / "flops_table.csv") == _rows(out / "flops_table.csv")


def test_final_choice_scores_finalists_at_every_family_target(tiny_run):
    ranking = json.loads((tiny_run / "ranking.json").read_text())
    targets = sorted(float(t) for t in ranking["final"][0]["by_target"])
    assert targets == [0.4, 0.6] and ranking["settings"]["final_targets"] == "family"
    for f in ranking["final"]:
        assert f["mean"] == pytest.approx(sum(f["by_target"].values()) / 2, rel=1e-9)


@pytest.mark.parametrize("final_targets, winner", [("family", 0), ("search", 5)])
def test_a_ranking_that_collapses_at_a_larger_member_loses_the_final_choice(monkeypatch, final_targets, winner):
    """Candidate 5 is the best at the search target (0.2) and collapses at 0.5; the
    identity seed (0) is a little worse at 0.2 and sound at 0.5."""
    import types

    import numpy as np

    from legr_edge.config import SearchConfig
    from legr_edge.evolution import Candidate, EvolutionSettings, EvolutionState

    at = {0: {0.2: -1.2, 0.5: -0.5}, 5: {0.2: -1.1, 0.5: -1.5}}
    calls = []

    def fitness(ctx, k, alpha, kappa, round=0, targets=None):
        calls.append((k, round, targets))
        return float(np.mean([at.get(k, {0.2: -3.0, 0.5: -3.0})[t] for t in targets])), {}

    monkeypatch.setattr(workflow, "candidate_fitness", fitness)
    cfg = SearchConfig(targets=(0.5, 0.2), finalists=1, final_rounds=2, final_targets=final_targets)
    state = EvolutionState.fresh(EvolutionSettings(population=6, sample=2, candidates=6), np.ones(2),
                                 [(np.ones(2), np.zeros(2))])
    state.history = [Candidate(k, [1.0, 1.0], [0.0, 0.0], {0: -1.2, 5: -1.1}.get(k, -3.0), {})
                     for k in range(6)]
    ctx = types.SimpleNamespace(cfg=cfg)
    best, final = workflow.choose_final(ctx, state)
    assert best.index == winner
    expected = (0.2, 0.5) if final_targets == "family" else (0.2,)
    assert sorted({c[2] for c in calls}) == [(t,) for t in expected]
    assert {c[1] for c in calls} == {1, 2} and {f["index"] for f in final} == {0, 5}
    # each member is cut with the finalist best at its own target (where it was re-scored)
    members = workflow.choose_members(ctx, state, best, final)
    if final_targets == "family":
        assert {t: c.index for t, c in members.items()} == {0.2: 5, 0.5: 0}
    else:
        assert {t: c.index for t, c in members.items()} == {0.2: 5, 0.5: 5}
    one = types.SimpleNamespace(cfg=SearchConfig(targets=(0.5, 0.2), member_choice="one"))
    assert {c.index for c in workflow.choose_members(one, state, best, final).values()} == {best.index}


def test_seeds_computed_at_the_other_family_targets_are_rescored_there(tiny_run):
    ranking = json.loads((tiny_run / "ranking.json").read_text())
    assert ranking["settings"]["target_seeds"] is True
    # the search target (0.4) has them as evolution seeds already; 0.6 gets its own
    assert sorted({e["target"] for e in ranking["target_seeds"]}) == [0.6]
    assert [e["seed"] for e in ranking["target_seeds"]][0] == "uniform"
    assert all(isinstance(e["fitness"], float) for e in ranking["target_seeds"])


def test_a_seed_computed_at_a_target_wins_that_member_only_where_it_rescores_best(monkeypatch):
    import types

    import numpy as np

    from legr_edge.config import SearchConfig
    from legr_edge.evolution import Candidate, EvolutionSettings, EvolutionState

    cfg = SearchConfig(targets=(0.7, 0.5, 0.2), finalists=1)
    state = EvolutionState.fresh(EvolutionSettings(population=4, sample=2, candidates=4), np.ones(2))
    state.history = [Candidate(k, [1.0, 1.0], [0.0, 0.0], -1.0 - k, {}) for k in range(4)]
    final = [{"index": 0, "by_target": {"0.7": -0.4, "0.5": -0.6, "0.2": -1.0}, "mean": -0.67, "seed": True}]
    seeds = [{"target": 0.7, "seed": "uniform", "fitness": -0.45, "alpha": [2.0, 2.0], "kappa": [0.0, 0.0]},
             {"target": 0.5, "seed": "uniform", "fitness": -0.58, "alpha": [3.0, 3.0], "kappa": [0.1, 0.2]},
             {"target": 0.5, "seed": "stream_0.25", "fitness": -0.55, "alpha": [4.0, 4.0], "kappa": [0.3, 0.4]}]
    ctx = types.SimpleNamespace(cfg=cfg)
    members = workflow.choose_members(ctx, state, state.candidate(0), final, seeds)
    assert members[0.7].index == 0 and members[0.2].index == 0          # the finalist re-scored better
    assert members[0.5].index == -1 and members[0.5].info["target_seed"] == "stream_0.25@0.5"
    assert (members[0.5].alpha, members[0.5].kappa) == ([4.0, 4.0], [0.3, 0.4])
    # without the seeds (or with --member-choice one) nothing changes
    assert {c.index for c in workflow.choose_members(ctx, state, state.candidate(0), final).values()} == {0}
    one = types.SimpleNamespace(cfg=SearchConfig(targets=(0.7, 0.5, 0.2), member_choice="one"))
    assert {c.index for c in workflow.choose_members(one, state, state.candidate(0), final, seeds).values()} == {0}


def test_target_seeds_are_computed_at_each_other_target_and_scored_only_there(monkeypatch):
    import types

    import numpy as np

    from legr_edge.config import SearchConfig
    from legr_edge.evolution import EvolutionSettings, EvolutionState

    calls = []

    def fitness(ctx, k, alpha, kappa, round=0, targets=None):
        calls.append((k, round, targets))
        return -float(len(calls)), {}

    made = []

    def seeds_at(ctx, target, quiet=False):
        made.append(target)
        return {"uniform": (np.full(2, target), np.zeros(2)), "stream_0.25": (np.ones(2), np.full(2, target))}

    monkeypatch.setattr(workflow, "candidate_fitness", fitness)
    monkeypatch.setattr(workflow, "target_seed_transforms", seeds_at)
    state = EvolutionState.fresh(EvolutionSettings(population=4, sample=2, candidates=4), np.ones(2))
    cfg = SearchConfig(targets=(0.7, 0.5, 0.2), finalists=1, final_rounds=2, candidates=4)
    out = workflow.score_target_seeds(types.SimpleNamespace(cfg=cfg), state)
    assert made == [0.7, 0.5]                                   # not the search target (0.2)
    assert [(e["target"], e["seed"]) for e in out] == [(0.7, "uniform"), (0.7, "stream_0.25"),
                                                       (0.5, "uniform"), (0.5, "stream_0.25")]
    assert [c[2] for c in calls] == [(0.7,)] * 4 + [(0.5,)] * 4  # each scored at its own target only
    assert [c[1] for c in calls] == [1, 2] * 4                   # on the finalists' draws
    assert len({c[0] for c in calls}) == 4 and min(c[0] for c in calls) >= cfg.candidates
    assert out[0]["fitness"] == -1.5 and out[0]["alpha"] == [0.7, 0.7]  # mean of its draws
    for off in (dict(target_seeds=False), dict(member_choice="one"), dict(finalists=0),
                dict(seed_population=False)):
        calls.clear()
        assert workflow.score_target_seeds(types.SimpleNamespace(cfg=SearchConfig(**{**dict(
            targets=(0.7, 0.5, 0.2), finalists=1), **off})), state) == [] and not calls


def test_ranking_json_records_each_members_transform(tiny_run):
    ranking = json.loads((tiny_run / "ranking.json").read_text())
    members = {m["target"]: m for m in ranking["members"]}
    assert sorted(members) == [0.4, 0.6]
    final = {f["index"]: f for f in ranking["final"]}
    for t, m in members.items():
        best = max(final.values(), key=lambda f: (f["by_target"][f"{t:g}"], -f["index"]))
        at_t = [e for e in ranking["target_seeds"] if e["target"] == t]
        if m["index"] is None:  # a seed computed at t won: it re-scored above every finalist there
            seed = next(e for e in at_t if f"{e['seed']}@{t:g}" == m["target_seed"])
            assert seed["fitness"] > best["by_target"][f"{t:g}"]
        else:
            assert m["index"] == best["index"]
            assert all(e["fitness"] <= best["by_target"][f"{t:g}"] for e in at_t)
        assert len(m["alpha"]) == len(m["kappa"]) == len(ranking["layers"])
    names = tuple(layer["name"] for layer in ranking["layers"])
    loaded = workflow.LearnedRanking.from_json(ranking, names, (0.6, 0.4))
    for t, m in members.items():
        assert list(loaded.for_target(t)[0]) == m["alpha"]
    assert list(loaded.for_target(0.33)[0]) == [layer["alpha"] for layer in ranking["layers"]]


@pytest.mark.parametrize("corrupt, message", [
    (lambda r: r["members"][0].update(alpha=r["members"][0]["alpha"][:-1]), "members[0].alpha must be 21 finite"),
    (lambda r: r["members"][0].update(kappa=["nan"] * 21), "members[0].kappa must be 21 finite"),
    (lambda r: r["members"][1].update(target=0.33), "members[1].target 0.33 is not one of the targets"),
    (lambda r: r["layers"][0].update(name="evil"), "'layers' does not name this model's 21 scored layers"),
])
def test_a_tampered_ranking_json_is_refused_on_resume(tiny_run, tmp_path, corrupt, message, caplog):
    """ranking.json travels with the run directory: a resumed run checks it before
    cutting any member with it, fails with one line, and leaves the run as it was."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for member in (run / "models").iterdir():
        if member.name != "dense":
            shutil.rmtree(member)
    ranking = json.loads((run / "ranking.json").read_text())
    corrupt(ranking)
    (run / "ranking.json").write_text(json.dumps(ranking))
    before = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    assert main(TINY_SEARCH + ["--out", str(run), "--resume", "--no-export"]) == 1
    assert message in caplog.text
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == before


def test_final_tau_trains_only_the_finalists_longer(monkeypatch):
    """--final-tau: the search's round 0 trains --tau steps per candidate, the
    finalists' re-scoring rounds --final-tau; the setting is recorded in ranking.json
    only when given, so rankings learned before it existed still resume."""
    import types

    from legr_edge.config import SearchConfig

    built = {}

    class Evaluator:
        def __init__(self, data, info, device, settings, round):
            built[round] = settings.tau

    monkeypatch.setattr(workflow, "FitnessEvaluator", Evaluator)
    for final_tau, expected in ((None, {0: 7, 1: 7, 2: 7}), (60, {0: 7, 1: 60, 2: 60})):
        built.clear()
        cfg = SearchConfig(tau=7, final_tau=final_tau)
        ctx = workflow.Context(cfg, None, None, types.SimpleNamespace(info=None), None, None, None)
        for r in (0, 1, 2):
            ctx.evaluator(r)
        assert built == expected
        assert ("final_tau" in workflow._ranking_settings(cfg)) == (final_tau is not None)


def test_stream_seeds_are_recorded_only_when_there_are_some():
    """Rankings learned before --stream-seeds existed (none) keep their recorded settings."""
    from legr_edge.config import SearchConfig

    assert "stream_seeds" not in workflow._ranking_settings(SearchConfig(stream_seeds=()))
    assert workflow._ranking_settings(SearchConfig())["stream_seeds"] == [0.25, 0.5]
    assert "stream_seeds" not in workflow._ranking_settings(SearchConfig(scoring="paper", stream_seeds=()))


def test_a_run_made_before_stream_seeds_resumes_only_without_them(tmp_path):
    """A config.json without the key was made when there were no stream seeds: resuming it
    with today's default would change the method, so it is refused, naming the key."""
    from legr_edge.config import SearchConfig
    from legr_edge.errors import LegrError

    saved = tmp_path / "config.json"
    old = SearchConfig(stream_seeds=()).to_dict()
    del old["stream_seeds"]
    saved.write_text(json.dumps(old))
    workflow._check_same_run(saved, SearchConfig(stream_seeds=()))
    with pytest.raises(LegrError, match=r"stream_seeds: \[\] -> \[0.25, 0.5\]"):
        workflow._check_same_run(saved, SearchConfig())


def test_seeds_beyond_the_population_are_left_out(tiny_run):
    """TINY_SEARCH's population of 3 holds identity, raw L2 and uniform; the two stream seeds
    are left out (logged) instead of failing the search."""
    ranking = json.loads((tiny_run / "ranking.json").read_text())
    assert ranking["settings"]["stream_seeds"] == [0.25, 0.5] and ranking["settings"]["population"] == 3
    state = json.loads((tiny_run / "search_state.json").read_text())
    assert len(state["seeds"]) == 3


def test_a_run_made_before_the_coupled_score_resumes_only_with_the_filter_score(tmp_path):
    """config.json of a run made before --score-source existed has no such key: that run
    scored filters by their own norm, so resuming it under today's default (coupled) is
    refused by name, and --score-source filter resumes it."""
    from legr_edge.config import SearchConfig
    from legr_edge.errors import LegrError
    from legr_edge.workflow import _check_same_run

    old = SearchConfig(score_source="filter").to_dict()
    old.pop("score_source")
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(old))
    with pytest.raises(LegrError, match="score_source: 'filter' -> 'coupled'"):
        _check_same_run(saved, SearchConfig())
    _check_same_run(saved, SearchConfig(score_source="filter"))
