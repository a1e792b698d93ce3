"""The workstation pipeline behind ``python -m legr_edge.search``.

Stages, each resumable from the run directory:
1. dense model: load ``--checkpoint`` or pretrain; saved as ``models/dense``;
2. ranking: regularized evolution of per-layer (alpha, kappa) at the search target,
   state saved after every candidate (``search_state.json``); the best few candidates
   and the seeds are re-scored on fresh batches and the best mean wins (``ranking.json``);
3. family: prune the dense model at every target with the learned ranking (by default
   the finalist that re-scored best at that target, ``--member-choice``), fine-tune,
   evaluate (``models/<name>``, one ``metrics.json`` each when finished);
4. reports: ``flops_table.csv`` + ``tradeoff_flops.png``; then ONNX export.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from legr_edge import io, report
from legr_edge.config import SearchConfig, member_name
from legr_edge.errors import LegrError
from legr_edge.evolution import Candidate, EvolutionSettings, EvolutionState, SerialPool, evolve_async, load_state
from legr_edge.fitness import FitnessEvaluator, FitnessSettings
from legr_edge.models import arch
from legr_edge.models.registry import create_model
from legr_edge.prune.coupling import build_coupling, stream_groups
from legr_edge.prune.cost import build_cost_model, count_macs, count_params
from legr_edge.prune.ranking import Pruner
from legr_edge.prune.scoring import LayerScores, base_scores, paper_transform, uniform_scores, uniform_transform
from legr_edge.prune.surgery import prune_model
from legr_edge.rundir import read_json_object
from legr_edge.train import SGDSettings, evaluate, fit

log = logging.getLogger(__name__)

# Settings that may differ between an interrupted run and its --resume.
RESUME_MAY_DIFFER = {"device", "export", "opset", "out", "workers", "ray_address"}
# keys added after runs were made, whose default then changed: a run without the key had this
LEGACY_VALUES: dict[str, Any] = {"stream_seeds": [], "target_seeds": False, "score_source": "filter"}


@dataclasses.dataclass
class Context:
    """Everything the stages share once the data and the dense model are ready."""

    cfg: SearchConfig
    run: Path
    device: torch.device
    data: Any                 # legr_edge.data.DataBundle
    dense: nn.Module
    scores: LayerScores
    pruner: Pruner
    latency: Any = None       # LatencyCostModel when a --latency-table is given
    evaluators: dict[int, FitnessEvaluator] = dataclasses.field(default_factory=dict)

    @property
    def info(self):
        return self.data.info

    @property
    def mac_cost(self):
        """The analytic MAC counter, also when the Pruner's cost is predicted latency."""
        return getattr(self.pruner.cost, "base", self.pruner.cost)

    def evaluator(self, round: int = 0) -> FitnessEvaluator:
        """The fitness of recalibration draw ``round`` (built once: its batches are fixed);
        the search's is round 0, the finalists' re-scoring rounds 1.. (``--final-tau`` steps)."""
        if round not in self.evaluators:
            c = self.cfg
            settings = FitnessSettings(metric=c.fitness, recal_batches=c.recal_batches,
                                       batch_size=c.batch_size, val_limit=c.fitness_val_limit,
                                       tau=c.tau if round == 0 else c.effective_final_tau,
                                       tau_lr=c.tau_lr, seed=c.seed,
                                       common_batches=c.tau_batches == "common")
            self.evaluators[round] = FitnessEvaluator(self.data, self.info, self.device, settings, round)
        return self.evaluators[round]


def run_search(cfg: SearchConfig, resume: bool) -> Path:
    if cfg.distributed:  # before anything is written: without Ray, one line naming the install
        from legr_edge.distributed import require_ray
        require_ray()
    run = prepare_run_dir(cfg, resume)  # checks only: nothing is written before the input is valid
    device = pick_device(cfg.device)
    data = load_data(cfg)
    check_model(cfg, data)
    write_run_config(run, cfg)
    dense, dense_row = dense_model(cfg, data, run, device)
    ctx = make_context(cfg, run, device, data, dense)
    log.info("dense %s: %.2f MMACs, %d params, val top-1 %.2f, test top-1 %.2f; %d channel groups, %d scored layers",
             cfg.model, dense_row["macs"] / 1e6, dense_row["params"], dense_row["val_top1"],
             dense_row["test_top1"], len(ctx.pruner.coupling.groups), len(ctx.scores.layer_names))
    pool = None
    if cfg.distributed:
        from legr_edge.distributed import open_pool
        pool = open_pool(ctx)
    try:
        ranking = search_ranking(ctx, pool)
        if ctx.latency is not None:
            dense_row = {**dense_row, "predicted_ms": ctx.latency.dense_macs(ctx.pruner.coupling.num_channels)}
        rows = [dense_row] + build_family(ctx, ranking, pool)
    finally:
        if pool is not None:
            pool.close()
    report.write_flops_table(run, rows)
    report.plot_tradeoff(run, rows, f"{cfg.model} on {cfg.dataset}: LeGR family")
    print(report.format_flops_table(rows))
    if cfg.export:
        from legr_edge.export import export_run
        export_run(run, opset=cfg.opset, profile=cfg.profile)
    log.info("done: %s", run)
    return run


def prepare_run_dir(cfg: SearchConfig, resume: bool) -> Path:
    """Check that --out can hold this run; writes nothing (see write_run_config)."""
    run = Path(cfg.run_dir)
    saved = run / "config.json"
    if run.exists() and not run.is_dir():
        raise LegrError(f"--out {run}: exists and is not a directory")
    _check_writable(run)
    if saved.exists():
        if not resume:
            raise LegrError(f"{run} already holds a run (config.json); pass --resume to continue it "
                            "or choose another --out")
        _check_same_run(saved, cfg)
    elif run.exists() and any(run.iterdir()):
        raise LegrError(f"{run} is not empty and never held a run (no config.json); "
                        + ("nothing to resume there; " if resume else "") + "choose another --out")
    elif resume:
        log.info("%s holds no run yet; starting a new one", run)
    return run


def _check_writable(run: Path) -> None:
    """--out (or its nearest existing parent) must be a writable directory."""
    import os
    probe = run
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise LegrError(f"--out {run}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise LegrError(f"--out {run}: {probe} is not writable")


def check_model(cfg: SearchConfig, data) -> None:
    """Build the dense model once and load --checkpoint before anything is written, so a bad
    --model or checkpoint leaves --out untouched (and the corrected command is not refused)."""
    from legr_edge.models.registry import trust_factory
    if ":" in cfg.model:
        trust_factory(cfg.model)  # named on the command line (--resume must name it again)
    model = create_model(cfg.model, data.info.num_classes, data.info.in_chans)
    _check_input(model, data.info)
    if cfg.checkpoint:
        arch.load_weights(model, cfg.checkpoint)


def write_run_config(run: Path, cfg: SearchConfig) -> None:
    """config.json of a new run; a resumed run keeps its own (it matched, see _check_same_run)."""
    if (run / "config.json").exists():
        return
    run.mkdir(parents=True, exist_ok=True)
    io.write_json(run / "config.json", cfg.to_dict())


def _check_same_run(saved: Path, cfg: SearchConfig) -> None:
    old = read_json_object(saved, "configuration of the run to resume")
    new = json.loads(json.dumps(cfg.to_dict()))
    # a key added after the run was made (e.g. cost) counts as its default, or as the value
    # that runs without it had when the default changed later (LEGACY_VALUES)
    defaults = json.loads(json.dumps(SearchConfig().to_dict()))
    old = {**{k: v for k, v in defaults.items() if k not in old}, **{k: v for k, v in LEGACY_VALUES.items()
                                                                     if k not in old}, **old}
    diff = sorted(k for k in new if k not in RESUME_MAY_DIFFER and old.get(k) != new[k])
    if diff:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in diff)
        raise LegrError(f"--resume with different settings than {saved}: {details}")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise LegrError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def load_data(cfg: SearchConfig):
    from legr_edge.data import load_dataset
    from legr_edge.models.registry import model_config

    size = cfg.input_size
    registered = ":" not in cfg.model
    if size is None and cfg.dataset == "imagefolder" and registered:
        size = model_config(cfg.model).input_size[1:]
    bundle = load_dataset(cfg.dataset, cfg.data_dir, val_fraction=cfg.val_fraction, seed=0,
                          image_size=size)
    if cfg.dataset == "imagefolder" and registered:
        # Folders of images have no statistics of their own: normalise as the model expects.
        mc = model_config(cfg.model)
        if len(mc.mean) == bundle.info.in_chans:
            bundle = dataclasses.replace(bundle, info=dataclasses.replace(
                bundle.info, mean=tuple(mc.mean), std=tuple(mc.std)))
    return bundle


def example_input(info, device: torch.device) -> torch.Tensor:
    return torch.zeros(1, info.in_chans, *info.image_size, device=device)


def model_meta(cfg: SearchConfig, info, **extra: Any) -> dict[str, Any]:
    return {"model": cfg.model, "dataset": cfg.dataset, "num_classes": info.num_classes,
            "in_chans": info.in_chans, "input_size": [info.in_chans, *info.image_size],
            "mean": list(info.mean), "std": list(info.std), **extra}


def dense_model(cfg: SearchConfig, data, run: Path, device: torch.device):
    """The pretrained network: saved one if resuming, else --checkpoint, else trained here."""
    info, out = data.info, run / "models" / "dense"
    if (out / "metrics.json").exists():
        log.info("dense model: reusing %s", out)
        return arch.load_model(out, device), read_json_object(out / "metrics.json", "dense model metrics")
    torch.manual_seed(cfg.seed)  # weight init draws from torch's global generator
    model = create_model(cfg.model, info.num_classes, info.in_chans)
    _check_input(model, info)
    model.to(device)
    if cfg.checkpoint:
        arch.load_weights(model, cfg.checkpoint, device)
        val, _ = evaluate(model, data.val, info, device)
    else:
        settings = SGDSettings(lr=cfg.pretrain_lr, nesterov=True, batch_size=cfg.batch_size)
        model, val = fit(model, data.train, data.val, info, cfg.pretrain_epochs, settings, device,
                         cfg.seed, "pretrain")
    return model, _finish_member(cfg, data, model, out, "dense", 1.0, val, None)


def _check_input(model: nn.Module, info) -> None:
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, info.in_chans, *info.image_size))
    except Exception as e:
        raise LegrError(f"model does not accept {info.name} inputs of shape "
                        f"{(info.in_chans, *info.image_size)}: {type(e).__name__}: {e}") from e
    if out.dim() != 2 or out.shape[1] != info.num_classes:
        raise LegrError(f"model output shape {tuple(out.shape)} does not match {info.num_classes} classes")


def _finish_member(cfg, data, model, out: Path, name: str, target: float, val: float,
                   dense_macs: int | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate on test (once, for the report), save weights + arch + metrics."""
    info = data.info
    device = next(model.parameters()).device
    test, _ = evaluate(model, data.test, info, device)
    macs = count_macs(model, example_input(info, device))
    row = {"name": name, "target": target, "macs": macs,
           "macs_ratio": macs / (dense_macs or macs), "params": count_params(model),
           "val_top1": val, "test_top1": test, "path": f"models/{name}", **(extra or {})}
    arch.save_model(model, out, model_meta(cfg, info, name=name, target=target, macs=macs))
    io.write_json(out / "metrics.json", row)
    return row


def make_context(cfg, run, device, data, dense) -> Context:
    example = example_input(data.info, device)
    coupling = build_coupling(dense, example, cfg.ignore_layers)
    cost = build_cost_model(dense, example, coupling)
    latency = None
    if cfg.latency_table:
        from legr_edge.device.profiles import load_profile
        from legr_edge.prune.latency_cost import build_latency_cost, load_table
        latency = build_latency_cost(cost, load_table(cfg.latency_table, load_profile(cfg.profile), cfg.model))
    pruner = Pruner(coupling, latency if cfg.cost == "latency" else cost, cfg.round_to, cfg.min_fraction,
                    cfg.min_channels)
    scores = base_scores(dense, coupling, cfg.score_norm, cfg.group_reduce, cfg.score_source)
    return Context(cfg, run, device, data, dense, scores, pruner, latency)


@dataclasses.dataclass(frozen=True)
class LearnedRanking:
    """The search's result: the winning (alpha, kappa), and per family target the
    transform its member is cut with (``--member-choice``; the winner where not given)."""

    alpha: np.ndarray
    kappa: np.ndarray
    members: dict[float, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)

    def for_target(self, target: float) -> tuple[np.ndarray, np.ndarray]:
        return self.members.get(target, (self.alpha, self.kappa))

    @classmethod
    def from_json(cls, ranking: dict[str, Any], layer_names: tuple[str, ...], targets: tuple[float, ...],
                  path: Path | str = "ranking.json") -> "LearnedRanking":
        """Read back a ``ranking.json`` (untrusted: it travels with the run directory).
        Every transform must have one finite number per scored layer, the layers must be
        this model's, and a member's target must be one of ``targets``."""
        layers = ranking.get("layers")
        if not isinstance(layers, list) or [l.get("name") if isinstance(l, dict) else None
                                             for l in layers] != list(layer_names):
            raise LegrError(f"{path}: 'layers' does not name this model's {len(layer_names)} scored layers")

        def vector(values, key: str) -> np.ndarray:
            try:
                out = np.array(values, dtype=float)
            except (TypeError, ValueError):
                out = np.array([])
            if out.shape != (len(layer_names),) or not np.all(np.isfinite(out)):
                raise LegrError(f"{path}: {key} must be {len(layer_names)} finite numbers")
            return out

        members = {}
        for i, m in enumerate(ranking.get("members", [])):
            target = m.get("target") if isinstance(m, dict) else None
            if target not in targets:
                raise LegrError(f"{path}: members[{i}].target {target!r} is not one of the targets "
                                f"{', '.join(f'{t:g}' for t in targets)}")
            members[float(target)] = (vector(m.get("alpha"), f"members[{i}].alpha"),
                                      vector(m.get("kappa"), f"members[{i}].kappa"))
        return cls(vector([l.get("alpha") for l in layers], "layers[].alpha"),
                   vector([l.get("kappa") for l in layers], "layers[].kappa"), members)


def search_ranking(ctx: Context, pool=None) -> LearnedRanking:
    """Learn (alpha, kappa) by regularized evolution; resumes from search_state.json.
    ``pool`` (legr_edge.distributed.RayPool) evaluates candidates on workers; default here."""
    cfg, run = ctx.cfg, ctx.run
    if (run / "ranking.json").exists():
        ranking = read_json_object(run / "ranking.json", "learned ranking")
        if ranking["settings"] != _ranking_settings(cfg) or ranking["search_target"] != cfg.effective_search_target:
            raise LegrError(f"{run / 'ranking.json'} was learned with other settings "
                            f"({ranking['settings']}); delete it or use another --out")
        log.info("ranking: reusing %s (best fitness %.4f)", run / "ranking.json", ranking["best_fitness"])
        return LearnedRanking.from_json(ranking, ctx.scores.layer_names, cfg.targets, run / "ranking.json")
    settings = EvolutionSettings(cfg.population, cfg.sample, cfg.candidates, 0.1, cfg.seed,
                                 cfg.init_scale, cfg.mutate_scale, around_seeds=cfg.seed_population)
    state_path = run / "search_state.json"
    if state_path.exists():
        state = load_state(state_path)
    else:
        seeds = seed_transforms(ctx) if cfg.seed_population else {}
        if len(seeds) > cfg.population:
            log.info("a population of %d holds only the first %d seed rankings: %s left out",
                        cfg.population, cfg.population, ", ".join(list(seeds)[cfg.population:]))
            seeds = dict(list(seeds.items())[:cfg.population])
        state = EvolutionState.fresh(settings, ctx.scores.sigma, list(seeds.values()))
    if state.settings != settings:
        raise LegrError(f"{state_path} was made with other search settings; delete it or match them")
    dense_macs = _dense_mac_count(ctx)  # the log reports MACs also when the search's cost is latency
    rows = [_log_row(c, dense_macs) for c in state.history]
    if rows:
        log.info("ranking: resuming the search after %d of %d candidates", len(rows), cfg.candidates)
    bar = tqdm(total=cfg.candidates, initial=len(rows), desc="search", unit="cand", leave=False, disable=None)

    def record(cand) -> None:
        rows.append(_log_row(cand, dense_macs))
        io.write_csv(run / "search_log.csv", rows, report.SEARCH_LOG_COLUMNS)
        bar.update(1)
        best = state.best()
        log.info("candidate %d/%d: fitness %.4f, val top-1 %.2f, %.2f MMACs (%.3f), %.1fs; best %.4f (#%d)",
                 cand.index + 1, cfg.candidates, cand.fitness, cand.info["val_top1"],
                 cand.info["macs"] / 1e6, cand.info["macs"] / dense_macs,
                 cand.info["seconds"], best.fitness, best.index)

    evolve_async(pool or SerialPool(lambda k, a, kp: candidate_fitness(ctx, k, a, kp)), state, state_path, record)
    bar.close()
    best, final = choose_final(ctx, state, pool)
    at_targets = score_target_seeds(ctx, state, pool)
    members = choose_members(ctx, state, best, final, at_targets)
    write_ranking(ctx, best, final, members, at_targets)
    return LearnedRanking(np.asarray(best.alpha), np.asarray(best.kappa),
                          {t: (np.asarray(c.alpha), np.asarray(c.kappa)) for t, c in members.items()})


def seed_transforms(ctx: Context) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The initial population's seeds: identity (normalised scores), the paper's rule, and
    the seeds computed at the search target (:func:`target_seed_transforms`).

    The paper's rule is raw (unnormalised) base scores, a group SUMMING its members. On
    ``--score-source filter`` that is the paper's raw-L2 ranking exactly (``paper_l2``). On
    ``coupled`` (the default) the base score of a filter is no longer its own norm, so the
    paper's ranking is not a point of the search space (it orders filters inside a layer
    differently); the seed is then the paper's rule on the coupled magnitudes
    (``paper_sum``): their group sum, which cuts the residual streams last. The paper's own
    ranking stays measurable with ``--score-source filter`` or ``--scoring paper``."""
    scores = ctx.scores
    seeds = {"identity": scores.identity()}
    if scores.norm != "lamp":
        seeds["paper_l2" if scores.source == "filter" else "paper_sum"] = paper_transform(scores)
    seeds.update(target_seed_transforms(ctx, ctx.cfg.effective_search_target))
    return seeds


def target_seed_transforms(ctx: Context, target: float,
                           quiet: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The seeds that depend on a MAC target: uniform pruning at ``target`` (per-group
    kappa offsets), and for each ``--stream-seeds`` value s, uniform pruning with the
    residual streams kept wider: a stream group keeps u + s * (1 - u) of its channels (u:
    its uniform share), the other groups share what is left of the budget. s = 0 is
    uniform pruning; s = 1 keeps the streams whole, as raw-L2 pruning does on deep ResNets.
    Each is exact only at its own target (at another it is some other allocation), which
    is why ``--target-seeds`` computes them again at every family target."""
    scores, pruner, cfg = ctx.scores, ctx.pruner, ctx.cfg
    if scores.reduce != "mean":
        return {}
    note = log.debug if quiet else log.info
    coupling = pruner.coupling
    group = coupling.group_of_channel
    base = scores.transformed(*scores.identity())
    mask, _ = pruner.prune_to(uniform_scores(base, group), target)
    counts = np.bincount(group[mask], minlength=len(coupling.groups))
    seeds = {"uniform": uniform_transform(scores, coupling, counts)}
    streams = stream_groups(coupling, ctx.dense)
    if cfg.stream_seeds and not streams.any():
        note("stream seeds: the model has no residual streams (no group written by two convs)")
    share = counts / np.array([g.size for g in coupling.groups])
    made = [counts]
    for s in cfg.stream_seeds if streams.any() else ():
        wide = pruner.stream_counts(base, streams, share + s * (1.0 - share), target)
        if wide is None or any(np.array_equal(wide, c) for c in made):
            note("stream seed %g at %g: %s", s, target, "the streams alone exceed the target"
                 if wide is None else "the same network as another seed; skipped")
            continue
        made.append(wide)
        seeds[f"stream_{s:g}"] = uniform_transform(scores, coupling, wide)
    return seeds


def candidate_fitness(ctx: Context, k: int, alpha: np.ndarray, kappa: np.ndarray, round: int = 0,
                      targets: tuple[float, ...] | None = None):
    """Prune at every fitness target (or at ``targets``), score each (see
    legr_edge.fitness), average."""
    start = time.perf_counter()
    scores = ctx.scores.transformed(alpha, kappa)
    values, infos = [], []
    for target in targets or ctx.cfg.effective_fitness_targets:
        mask, _ = ctx.pruner.prune_to(scores, target)
        net = prune_model(ctx.dense, ctx.pruner.coupling, mask)
        value, info = ctx.evaluator(round)(net, k)
        values.append(value)
        infos.append(dict(info, macs=ctx.mac_cost.macs(mask)))
    first = infos[0]  # the search target (or the first fitness target)
    return float(np.mean(values)), {"val_top1": first["val_top1"], "val_loss": first["val_loss"],
                                    "macs": first["macs"], "seconds": time.perf_counter() - start}


def choose_final(ctx: Context, state: EvolutionState, pool=None) -> tuple[Candidate, list[dict[str, Any]]]:
    """Re-score the best ``finalists`` candidates and the seeds on ``final_rounds`` fresh
    recalibration draws at every final target (``--final-targets family``: every target of
    the family); the best MEAN wins. One lucky evaluation cannot decide, a ranking that
    wins at the search target but collapses at a larger member of the family loses, and
    the result is never worse than a seed by the fitness' own (re-scored) measure."""
    cfg = ctx.cfg
    if cfg.finalists == 0 or cfg.final_rounds == 0:
        return state.best(), []
    ranked = sorted(state.history, key=lambda c: (-c.fitness, c.index))
    picks = {c.index: c for c in ranked[:cfg.finalists]}
    picks.update({c.index: c for c in state.history if c.index < len(state.seeds)})
    rounds, targets = range(1, cfg.final_rounds + 1), cfg.effective_final_targets
    values = _rescore(ctx, [(c.index, np.asarray(c.alpha), np.asarray(c.kappa), r, (t,))
                            for c in picks.values() for r in rounds for t in targets], pool)
    final = []
    for cand in picks.values():
        by_round = [[values.pop(0) for _ in targets] for _ in rounds]
        final.append({"index": cand.index, "search_fitness": cand.fitness,
                      "rescored": [float(np.mean(v)) for v in by_round],
                      "by_target": {f"{t:g}": float(np.mean([v[i] for v in by_round]))
                                    for i, t in enumerate(targets)},
                      "mean": float(np.mean(by_round)), "seed": cand.index < len(state.seeds)})
    winner = max(final, key=lambda f: (f["mean"], -f["index"]))
    log.info("ranking: candidate #%d wins the re-scoring (mean fitness %.4f over %d draws at targets %s; "
             "%d finalists)", winner["index"], winner["mean"], cfg.final_rounds,
             ", ".join(f"{t:g}" for t in targets), len(final))
    return state.candidate(winner["index"]), final


def score_target_seeds(ctx: Context, state: EvolutionState, pool=None) -> list[dict[str, Any]]:
    """``--target-seeds``: the uniform and stream seeds computed AT each family target
    other than the search target (there they are the evolution's own seeds), re-scored
    there only, on the finalists' draws. A seed computed at the search target is another
    allocation at 0.5; the one computed at 0.5 is the network uniform (or wide-stream)
    pruning really gives there, and may beat every finalist at that member."""
    cfg = ctx.cfg
    if not (cfg.target_seeds and cfg.member_choice == "per_target" and cfg.seed_population
            and cfg.finalists and cfg.final_rounds):
        return []
    scored_at = set(cfg.effective_final_targets) - {cfg.effective_search_target}
    entries = [(t, name, a, k) for t in sorted(set(cfg.targets) & scored_at, reverse=True)
               for name, (a, k) in target_seed_transforms(ctx, t, quiet=True).items()]
    if not entries:
        return []
    rounds = range(1, cfg.final_rounds + 1)
    first = cfg.candidates  # job numbers past the evolution's candidates (they seed nothing shared)
    values = _rescore(ctx, [(first + j, np.asarray(a), np.asarray(k), r, (t,))
                            for j, (t, _, a, k) in enumerate(entries) for r in rounds], pool)
    out = []
    for t, name, a, k in entries:
        draws = [values.pop(0) for _ in rounds]
        out.append({"target": t, "seed": name, "fitness": float(np.mean(draws)),
                    "alpha": [float(x) for x in a], "kappa": [float(x) for x in k]})
    log.info("ranking: %d seeds computed at the family targets %s re-scored there", len(out),
             ", ".join(f"{t:g}" for t in sorted({e["target"] for e in out}, reverse=True)))
    return out


def choose_members(ctx: Context, state: EvolutionState, best: Candidate,
                   final: list[dict[str, Any]], target_seeds: list[dict[str, Any]] = ()) -> dict[float, Candidate]:
    """The candidate each family member is cut with: with ``--member-choice per_target``
    the finalist (seeds included) whose re-scored fitness at that target is the best,
    else the winner. A ranking learned at the smallest target is not always the best at
    the largest ones (where the seeds often re-score better); this costs nothing more,
    the re-scoring measured every finalist at every target already. A seed computed at
    that target (``target_seeds``, see :func:`score_target_seeds`) wins where it
    re-scored strictly better than every finalist; it is returned as a Candidate with
    index -1 and ``info["target_seed"]`` naming it."""
    cfg = ctx.cfg
    members = {t: best for t in cfg.targets}
    if cfg.member_choice != "per_target":
        return members
    for t in cfg.targets:
        scored = [f for f in final if f"{t:g}" in f["by_target"]]
        value = -np.inf
        if scored:
            pick = max(scored, key=lambda f: (f["by_target"][f"{t:g}"], -f["index"]))
            members[t], value = state.candidate(pick["index"]), pick["by_target"][f"{t:g}"]
        for seed in (e for e in target_seeds if e["target"] == t):
            if seed["fitness"] > value:
                value = seed["fitness"]
                members[t] = Candidate(-1, seed["alpha"], seed["kappa"], seed["fitness"],
                                       {"target_seed": f"{seed['seed']}@{t:g}"})
    picked = {f"{t:g}": c.info.get("target_seed", c.index) if c.index < 0 else c.index
              for t, c in sorted(members.items())}
    log.info("ranking: members cut with candidates %s (target: candidate, or a seed computed there)", picked)
    return members


def _rescore(ctx: Context, jobs: list[tuple], pool=None) -> list[float]:
    """candidate_fitness of every (k, alpha, kappa, round) job, in job order; on the pool's
    workers when there is one."""
    if pool is None:
        return [candidate_fitness(ctx, *job)[0]
                for job in tqdm(jobs, desc="final", unit="cand", leave=False, disable=None)]
    values = dict((i, out[0]) for i, out in pool.imap("fitness", jobs))
    return [values[i] for i in range(len(jobs))]


def _log_row(cand, dense_macs: int) -> dict[str, Any]:
    return {"index": cand.index, "fitness": cand.fitness, **cand.info,
            "macs_ratio": cand.info["macs"] / dense_macs, "worker": cand.worker}


def write_ranking(ctx: Context, best, final: list[dict[str, Any]], members: dict[float, Candidate],
                  target_seeds: list[dict[str, Any]] = ()) -> None:
    cfg = ctx.cfg
    io.write_json(ctx.run / "ranking.json", {
        "format": "legr_edge.ranking/2", "model": cfg.model, "dataset": cfg.dataset,
        "search_target": cfg.effective_search_target, "fitness_metric": cfg.fitness,
        "scoring": cfg.scoring, "score_norm": cfg.score_norm, "group_reduce": cfg.group_reduce,
        "score_source": cfg.score_source,
        "best_fitness": best.fitness, "best_index": best.index, "best_info": best.info,
        "final": final,
        # --target-seeds: the seeds computed at each family target, re-scored there
        "target_seeds": [{k: e[k] for k in ("target", "seed", "fitness")} for e in target_seeds],
        "layers": [{"name": n, "alpha": a, "kappa": k}
                   for n, a, k in zip(ctx.scores.layer_names, best.alpha, best.kappa)],
        # per family target: the candidate its member is cut with (--member-choice)
        # (index null and target_seed naming it where a seed computed at that target won)
        "members": [{"target": t, "index": c.index if c.index >= 0 else None,
                     **({"target_seed": c.info["target_seed"]} if c.index < 0 else {}),
                     "alpha": list(c.alpha), "kappa": list(c.kappa)}
                    for t, c in sorted(members.items())],
        "settings": _ranking_settings(cfg),
        "dense_macs": _dense_mac_count(ctx), "cost": ctx.cfg.cost,
    })


def _ranking_settings(cfg: SearchConfig) -> dict[str, Any]:
    keys = ("scoring", "score_norm", "group_reduce", "seed_population", "init_scale", "mutate_scale",
            "population", "sample", "candidates", "recal_batches", "fitness_val_limit", "fitness_targets",
            "tau", "tau_lr", "tau_batches", "fitness", "finalists", "final_rounds", "final_targets",
            "member_choice", "round_to", "min_fraction", "min_channels", "seed", "batch_size")
    settings = {k: getattr(cfg, k) for k in keys}
    if cfg.final_tau is not None:  # recorded only when set: rankings learned before it keep matching
        settings["final_tau"] = cfg.final_tau
    if cfg.stream_seeds:  # likewise: rankings learned without them keep matching
        settings["stream_seeds"] = list(cfg.stream_seeds)
    if cfg.target_seeds:  # likewise
        settings["target_seeds"] = True
    if cfg.score_source != "filter":  # likewise
        settings["score_source"] = cfg.score_source
    return json.loads(json.dumps(settings))


def build_family(ctx: Context, ranking: LearnedRanking, pool=None) -> list[dict[str, Any]]:
    """Prune at every target with the learned ranking (the member's own pick, see
    choose_members), fine-tune, evaluate, save. Members
    are fine-tuned on the pool's workers side by side when there is a pool; each one is
    saved as soon as it is done, so a resumed run fine-tunes only the missing ones."""
    cfg, done, jobs = ctx.cfg, {}, []
    targets = sorted(set(cfg.targets), reverse=True)
    for target in targets:
        name = member_name(cfg, target)
        out = ctx.run / "models" / name
        if (out / "metrics.json").exists():
            done[target] = read_json_object(out / "metrics.json", f"metrics of {name}")
            log.info("%s: already fine-tuned, reusing", name)
            continue
        scores = ctx.scores.transformed(*ranking.for_target(target))
        mask, _ = ctx.pruner.prune_to(scores, target)
        mask, extra = _latency_extras(ctx, name, target, scores, mask)
        jobs.append((name, target, mask, extra))
    if pool is None:
        results = ((i, finetune_member(ctx, name, mask)) for i, (name, _, mask, _) in enumerate(jobs))
    else:
        results = pool.imap("finetune", [(name, mask) for name, _, mask, _ in jobs])
    for i, (net, val) in tqdm(results, total=len(jobs), desc="family", unit="model", leave=False, disable=None):
        name, target, _, extra = jobs[i]
        net = net.to(ctx.device)
        r = done[target] = _finish_member(cfg, ctx.data, net, ctx.run / "models" / name, name, target, val,
                                          _dense_mac_count(ctx), extra)
        log.info("%s: %.2f MMACs (%.3f of dense), val top-1 %.2f, test top-1 %.2f",
                 name, r["macs"] / 1e6, r["macs_ratio"], r["val_top1"], r["test_top1"])
    return [done[t] for t in targets]


def finetune_member(ctx: Context, name: str, mask: np.ndarray) -> tuple[nn.Module, float]:
    """The dense model cut to ``mask``, fine-tuned; (network, best val top-1). Seeded per run,
    so where (and in which order) members are fine-tuned does not change them."""
    cfg = ctx.cfg
    net = prune_model(ctx.dense, ctx.pruner.coupling, mask)
    settings = SGDSettings(lr=cfg.finetune_lr, nesterov=True, schedule="step", batch_size=cfg.batch_size)
    torch.manual_seed(cfg.seed + 1)  # dropout and anything else on the global generator
    return fit(net, ctx.data.train, ctx.data.val, ctx.info, cfg.finetune_epochs, settings,
               ctx.device, cfg.seed + 1, f"finetune {name}")


def _dense_mac_count(ctx: Context) -> int:
    return int(ctx.mac_cost.dense_macs(ctx.pruner.coupling.num_channels))


def _latency_extras(ctx: Context, name: str, target: float, scores: np.ndarray,
                    mask: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Latency cost: widen on the table's staircase, report an unreachable target; any table:
    the member's predicted latency for flops_table.csv."""
    if ctx.latency is None:
        return mask, {}
    from legr_edge.prune.latency_cost import staircase_widen, target_note

    dense = ctx.latency.dense_macs(ctx.pruner.coupling.num_channels)
    extra: dict[str, Any] = {}
    if ctx.cfg.cost == "latency":
        note = target_note(name, target, ctx.latency.latency(mask), dense)
        if note:
            log.warning("%s", note)
        before = ctx.latency.latency(mask)
        if ctx.cfg.staircase:
            mask, given = staircase_widen(ctx.pruner, scores, mask)
            extra["staircase_channels"] = given
            log.info("%s: staircase gives back %d channels (predicted %.4f -> %.4f ms)", name, given,
                     before, ctx.latency.latency(mask))
        extra["target_ms"] = target * dense
    extra["predicted_ms"] = ctx.latency.latency(mask)
    return mask, extra
