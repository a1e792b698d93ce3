"""search --workers on Ray: optional install, identity with the serial search, a worker killed
mid-run. The Ray tests start one local Ray (2 CPUs, no dashboard) for the module and skip
where Ray is not installed; the others check the install without Ray, in subprocesses
where ``import ray`` fails."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from legr_edge.config import SearchConfig, resolve
from legr_edge.errors import LegrError

from tests.helpers import TINY_SEARCH

ROOT = Path(__file__).resolve().parents[1]
NO_RAY = "import sys; sys.modules['ray'] = None  # import ray fails as if not installed\n"


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", NO_RAY + code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def test_workers_without_ray_exit_1_with_the_install_command(tmp_path):
    out = tmp_path / "run"
    p = _python(f"from legr_edge.search import main; raise SystemExit(main({TINY_SEARCH + ['--workers', '2', '--out', str(out)]!r}))",
                tmp_path)
    assert p.returncode == 1, p.stderr
    errors = [line for line in p.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and 'pip install "legr_edge[distributed]"' in errors[0], p.stderr
    assert "Traceback" not in p.stderr and not out.exists()  # refused before anything was written


def test_the_default_search_runs_without_ray(tmp_path):
    """The whole serial pipeline with ``import ray`` failing: nothing on it imports Ray."""
    out = tmp_path / "run"
    args = ["--preset", "smoke", "--pretrain-epochs", "1", "--population", "3", "--sample", "2", "--candidates",
            "3", "--finalists", "1", "--targets", "0.5", "--finetune-epochs", "1", "--no-export", "--out", str(out)]
    p = _python(f"from legr_edge.search import main; raise SystemExit(main({args!r}))", tmp_path)
    assert p.returncode == 0, p.stderr
    assert (out / "flops_table.csv").is_file()
    with open(out / "search_log.csv", newline="") as f:
        assert {r["worker"] for r in csv.DictReader(f)} == {"local"}


def test_worker_settings_are_checked_and_do_not_block_resume(tmp_path):
    with pytest.raises(LegrError, match="--workers"):
        resolve({"workers": -1})
    from legr_edge import io
    from legr_edge.workflow import _check_same_run, _ranking_settings
    cfg = resolve({"preset": "smoke"})
    io.write_json(tmp_path / "config.json", cfg.to_dict())
    _check_same_run(tmp_path / "config.json", resolve({"preset": "smoke", "workers": 2, "ray_address": "auto"}))
    assert "workers" not in _ranking_settings(cfg) and not cfg.distributed
    assert SearchConfig(workers=1).distributed and SearchConfig(ray_address="auto").distributed


# ----- with Ray -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install \"legr_edge[distributed]\")")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def _comparable(run: Path) -> tuple:
    state = json.loads((run / "search_state.json").read_text())
    for c in state["history"]:
        c["info"].pop("seconds"), c.pop("worker")
    ranking = json.loads((run / "ranking.json").read_text())
    ranking["best_info"].pop("seconds")
    return state, ranking, (run / "flops_table.csv").read_text()


def test_one_worker_gives_the_serial_result(ray, tiny_run, tmp_path):
    """--workers 1: the same search state (every candidate, in order), ranking and family as
    the serial run of the same seed and dense weights (tiny_run)."""
    from legr_edge.search import main

    out = tmp_path / "w1"
    args = TINY_SEARCH + ["--out", str(out), "--no-export", "--workers", "1",
                          "--checkpoint", str(tiny_run / "models" / "dense" / "weights.pt")]
    assert main(args) == 0
    with open(out / "search_log.csv", newline="") as f:
        workers = {r["worker"] for r in csv.DictReader(f)}
    assert len(workers) == 1 and workers.pop().startswith("w0@")
    assert _comparable(out) == _comparable(tiny_run)


def test_a_killed_worker_candidate_is_reissued(ray, tmp_path):
    """Two real workers; one process is SIGKILLed while it evaluates a candidate. Ray restarts
    it, the candidate is re-issued, every candidate completes with the fitness it has in this
    process (deterministic per index)."""
    import torch

    from legr_edge.distributed import RayPool
    from legr_edge.evolution import EvolutionSettings, EvolutionState, evolve_async
    from legr_edge.models.registry import create_model
    from legr_edge.workflow import candidate_fitness, load_data, make_context

    cfg = resolve({"preset": "smoke", "tau": 8, "round_to": 2, "out": str(tmp_path / "run")})
    data = load_data(cfg)
    torch.manual_seed(0)
    ctx = make_context(cfg, tmp_path, torch.device("cpu"),
                       data, create_model("resnet20", data.info.num_classes, data.info.in_chans))
    state = EvolutionState.fresh(EvolutionSettings(population=3, sample=2, candidates=5, seed=0), ctx.scores.sigma)

    class KillOnce:
        """The pool, plus a SIGKILL of the worker that has just started the second candidate."""

        def __init__(self, pool):
            self.pool, self.killed = pool, None

        def ready(self, k, done):
            return self.pool.ready(k, done)

        def submit(self, k, alpha, kappa):
            self.pool.submit(k, alpha, kappa)

        def collect(self):
            if self.killed is None:
                slot, job = next((s, j) for s, j in self.pool.running.values() if j.key == 1)
                self.killed = (job.key, self.pool.workers[slot]["pid"])
                os.kill(self.killed[1], signal.SIGKILL)
            return self.pool.collect()

    # address: the cluster path (--ray-address); the module's Ray is that cluster, already joined
    with RayPool(ctx, workers=2, address="auto") as pool:
        assert [w["threads"] for w in pool.workers] == [1, 1]
        proxy = KillOnce(pool)
        evolve_async(proxy, state, tmp_path / "state.json")
        assert [k for k, _ in pool.reissued] == [1]
    assert sorted(c.index for c in state.history) == list(range(5)) and not state.pending
    redone = state.candidate(1)
    assert f":{proxy.killed[1]}" not in redone.worker  # evaluated again by a live process
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: the same floating-point sums
    try:
        for c in (state.candidate(1), state.history[-1]):  # the re-issued one, and a child
            value, _ = candidate_fitness(ctx, c.index, np.asarray(c.alpha), np.asarray(c.kappa))
            assert c.fitness == pytest.approx(value, rel=1e-6)
    finally:
        torch.set_num_threads(threads)  # later tests compare runs with the fixture's thread count
