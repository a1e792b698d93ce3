"""The search on several workers: ``--workers N`` (local Ray) or ``--ray-address ADDR``.

Design: core Ray ACTORS driven by our own evolution loop, not Ray Tune. The run
directory, the seeded population, the resumable ``search_state.json`` and the
deterministic-per-candidate fitness already live in :mod:`legr_edge.evolution` and
:mod:`legr_edge.workflow`; Ray only decides WHERE a candidate runs. A Tune ``Searcher``
would move the loop into Tune's trial runner, with its own experiment directory,
checkpoints and resume semantics next to ours (two states to keep consistent), and a
trial per candidate costs far more bookkeeping than a 1-second candidate can carry.
Here the driver owns the whole state and draws every random number (at dispatch time,
see :func:`legr_edge.evolution.evolve_async`); workers are stateless apart from a cache.

- One actor per worker. Its constructor gets the dense model and the data set as Ray
  object references (``ray.put`` once in the driver, read from the object store once
  per worker) and builds the search :class:`~legr_edge.workflow.Context` (coupling,
  scores, pruner, fitness batches) a single time; each candidate then ships only its
  index and two short vectors. Each actor pins its torch threads (local: the driver's
  thread count split between the workers) and, where CUDA is used, one GPU.
- Asynchronous aging evolution: :class:`RayPool` is an evolution ``Pool``: a free
  worker takes the next child at once; results come back in completion order
  (``ray.wait``). ``search_log.csv`` names the worker of every candidate.
- A worker process that dies (killed, out of memory, node lost) is restarted by Ray
  (``max_restarts=-1``); the candidate it was running is re-issued, to the next free
  worker, with its recorded transform; the fitness is deterministic per candidate
  index, so the result is the one the dead worker would have returned.
- The final re-scoring of the finalists and the family's fine-tuning run across the
  workers too (:meth:`RayPool.imap`).
- ``--workers 1`` gives the serial search's result: one worker means each child is
  drawn after the previous one completed, exactly the serial order of random draws,
  and the worker uses the driver's thread count. With N > 1 the arrival order depends
  on timing and changes the tournaments; it is recorded (the history's order and each
  candidate's ``dispatched_after``), and :func:`legr_edge.evolution.replay` re-runs it.

Ray is optional (``pip install "legr_edge[distributed]"``): this module imports it only
when a pool is opened, and nothing else in legr_edge imports this module unless
``--workers`` or ``--ray-address`` is given.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from legr_edge.errors import LegrError

log = logging.getLogger(__name__)

INSTALL = 'pip install "legr_edge[distributed]"  (Ray 2.60.0)'
MAX_REISSUES = 3          # a candidate whose workers die this often stops the run
START_TIMEOUT_S = 600.0   # workers not up by then: the cluster lacks the resources asked for


def require_ray():
    """The ray module, or a one-line LegrError naming the install command."""
    try:
        import ray
    except ImportError:
        raise LegrError(f"--workers / --ray-address need Ray, which is not installed here: {INSTALL}") from None
    return ray


class Worker:
    """One Ray actor: the search context built once, then candidates and family members."""

    def __init__(self, slot: int, cfg, data, dense, threads: int, use_cuda: bool):
        import torch

        from legr_edge.workflow import make_context
        torch.set_num_threads(threads)
        device = torch.device("cuda" if use_cuda else "cpu")
        self.ctx = make_context(cfg, Path(cfg.run_dir), device, data, dense.to(device))
        self.label = f"w{slot}@{socket.gethostname()}:{os.getpid()}"
        self.threads, self.device = threads, str(device)

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "pid": os.getpid(), "threads": self.threads, "device": self.device}

    def fitness(self, k: int, alpha: np.ndarray, kappa: np.ndarray, round: int = 0,
                targets: tuple[float, ...] | None = None) -> dict[str, Any]:
        from legr_edge.workflow import candidate_fitness
        start = time.perf_counter()
        value, info = candidate_fitness(self.ctx, k, alpha, kappa, round, targets)
        return {"result": (value, info), "worker": self.label, "seconds": time.perf_counter() - start}

    def finetune(self, name: str, mask: np.ndarray) -> dict[str, Any]:
        from legr_edge.workflow import finetune_member
        start = time.perf_counter()
        net, val = finetune_member(self.ctx, name, mask)
        return {"result": (net.cpu(), val), "worker": self.label, "seconds": time.perf_counter() - start}


@dataclasses.dataclass
class _Job:
    key: Any
    method: str
    args: tuple
    tries: int = 0
    sent: float = 0.0


class RayPool:
    """N Ray workers behind the evolution's ``Pool`` interface and a parallel ``imap``.

    ``overheads`` collects, per finished job, the driver's wall time from dispatch to
    result minus the worker's own compute time: Ray's scheduling and transfer cost.
    """

    def __init__(self, ctx, workers: int = 0, address: str | None = None):
        self.ray = require_ray()
        import torch

        self.started_ray = not self.ray.is_initialized()
        use_cuda = ctx.cfg.device != "cpu" and (torch.cuda.is_available() if address is None else
                                                self._cluster_gpus(address) > 0)
        n, threads = self._start(ctx.cfg.device, workers, address, use_cuda)
        # held for the pool's life: a restarted worker rebuilds its context from them
        self.refs = data_ref, dense_ref = self.ray.put(ctx.data), self.ray.put(copy.deepcopy(ctx.dense).cpu())
        actor = self.ray.remote(Worker).options(num_cpus=threads, num_gpus=1 if use_cuda else 0,
                                                max_restarts=-1, max_task_retries=0)
        self.actors = [actor.remote(i, ctx.cfg, data_ref, dense_ref, threads, use_cuda) for i in range(n)]
        try:
            self.workers = self.ray.get([a.describe.remote() for a in self.actors], timeout=START_TIMEOUT_S)
        except self.ray.exceptions.GetTimeoutError:
            self.close()
            raise LegrError(f"{n} Ray workers did not start within {START_TIMEOUT_S:.0f} s: the cluster lacks "
                            f"the CPUs/GPUs asked for (--workers {n}, {threads} CPU"
                            f"{', 1 GPU' if use_cuda else ''} each)") from None
        except self.ray.exceptions.RayError as e:  # e.g. legr_edge not importable on a node
            self.close()
            raise LegrError(f"Ray workers failed to start: {type(e).__name__}: {e}") from e
        log.info("ray: %d workers up (%s)", n, ", ".join(f"{w['label']} {w['device']} x{w['threads']} threads"
                                                        for w in self.workers))
        self.idle = collections.deque(range(n))
        self.queue: collections.deque[_Job] = collections.deque()
        self.running: dict[Any, tuple[int, _Job]] = {}
        self.overheads: list[float] = []
        self.reissued: list[tuple[Any, str]] = []
        self.down: dict[int, list[float]] = {}   # dead workers Ray is restarting
        self.pings: dict[Any, int] = {}          # describe() calls to them

    # ----- start and stop -------------------------------------------------------------

    def _cluster_gpus(self, address: str) -> float:
        self._init(address=address)
        return self.ray.cluster_resources().get("GPU", 0.0)

    def _init(self, **kwargs) -> None:
        if not self.ray.is_initialized():
            try:
                self.ray.init(include_dashboard=False, logging_level=logging.WARNING, **kwargs)
            except ConnectionError as e:
                raise LegrError(f"--ray-address {kwargs.get('address')}: cannot join the Ray cluster ({e})") from e

    def _start(self, device: str, workers: int, address: str | None, use_cuda: bool) -> tuple[int, int]:
        """Start (or join) Ray; the number of workers and torch threads per worker."""
        import torch

        if address is not None:
            self._init(address=address)
            res = self.ray.cluster_resources()
            n = workers or int(res.get("GPU", 0) if use_cuda else res.get("CPU", 1))
            return max(n, 1), 1
        if use_cuda and workers > torch.cuda.device_count():
            raise LegrError(f"--workers {workers}: this machine has {torch.cuda.device_count()} CUDA devices "
                            "(one worker per GPU; pass --device cpu to run workers on CPU threads)")
        threads = max(1, torch.get_num_threads() // workers)
        self._init(num_cpus=max(workers * threads, os.cpu_count() or 1),
                   num_gpus=torch.cuda.device_count() if use_cuda else 0)
        return workers, threads

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            self.ray.kill(a)
        self.actors = []
        if self.started_ray and self.ray.is_initialized():
            self.ray.shutdown()

    def __enter__(self) -> "RayPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- the evolution's Pool ---------------------------------------------------------

    def ready(self, k: int, done: int) -> bool:
        return not self.queue and bool(self.idle)

    def submit(self, k: int, alpha: np.ndarray, kappa: np.ndarray) -> None:
        self.queue.append(_Job(k, "fitness", (k, alpha, kappa, 0)))
        self._dispatch()

    def collect(self) -> tuple[int, float, dict[str, Any], str]:
        k, out = self._next()
        value, info = out["result"]
        return k, value, info, out["worker"]

    # ----- any batch of jobs --------------------------------------------------------------

    def imap(self, method: str, jobs: list[tuple]) -> Iterator[tuple[int, Any]]:
        """Run ``Worker.<method>(*args)`` for every job across the workers; yields (job number,
        result) in completion order."""
        for i, args in enumerate(jobs):
            self.queue.append(_Job(i, method, args))
        self._dispatch()
        for _ in jobs:
            i, out = self._next()
            yield i, out["result"]

    # ----- internals ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        while self.queue and self.idle:
            slot, job = self.idle.popleft(), self.queue.popleft()
            job.sent = time.perf_counter()
            ref = getattr(self.actors[slot], job.method).remote(*job.args)
            self.running[ref] = (slot, job)

    def _next(self) -> tuple[Any, dict[str, Any]]:
        """Wait for one job; a dead worker's job goes back to the front of the queue, and the
        worker gets jobs again once Ray has restarted it (it answers a ping)."""
        ray = self.ray
        while True:
            self._ping_down()
            if not self.running and not self.pings:
                raise LegrError("ray: no worker left to run the search (all died and none came back within "
                                f"{START_TIMEOUT_S:.0f} s)" if self.queue else "ray pool: nothing running (a bug)")
            ready, _ = ray.wait([*self.running, *self.pings], num_returns=1, timeout=1.0)
            if not ready:
                continue
            ref = ready[0]
            if ref in self.pings:
                self._revived(self.pings.pop(ref), ref)
                continue
            slot, job = self.running.pop(ref)
            try:
                out = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                self._reissue(slot, job, e)
                continue
            except ray.exceptions.RayTaskError as e:
                raise e.as_instanceof_cause() from None  # a LegrError in the worker stays one
            self.overheads.append(time.perf_counter() - job.sent - out["seconds"])
            self.workers[slot]["label"] = out["worker"]
            self.idle.append(slot)
            self._dispatch()
            return job.key, out

    def _reissue(self, slot: int, job: _Job, error: Exception) -> None:
        job.tries += 1
        who = self.workers[slot]["label"]
        if job.tries > MAX_REISSUES:
            raise LegrError(f"ray: {job.method} job {job.key} lost its worker {job.tries} times; last: "
                            f"{type(error).__name__}") from None
        log.warning("ray: worker %s died (%s) while running %s %s; re-issued", who, type(error).__name__,
                    job.method, job.key)
        self.reissued.append((job.key, who))
        self.queue.appendleft(job)
        self.down[slot] = [time.perf_counter(), 0.0]  # [since, next ping]; Ray restarts the actor
        self._dispatch()

    def _ping_down(self) -> None:
        now = time.perf_counter()
        for slot, (since, next_ping) in list(self.down.items()):
            if slot in self.pings.values() or now < next_ping:
                continue
            if now - since > START_TIMEOUT_S:
                log.warning("ray: worker %s did not come back; going on without it", self.workers[slot]["label"])
                del self.down[slot]
                continue
            self.pings[self.actors[slot].describe.remote()] = slot

    def _revived(self, slot: int, ref) -> None:
        try:
            self.workers[slot] = self.ray.get(ref)
        except self.ray.exceptions.RayActorError:
            self.down[slot][1] = time.perf_counter() + 1.0  # still restarting: ask again in a second
            return
        log.info("ray: worker %d is back as %s", slot, self.workers[slot]["label"])
        del self.down[slot]
        self.idle.append(slot)
        self._dispatch()


def open_pool(ctx) -> RayPool:
    """The pool asked for by ``--workers`` / ``--ray-address`` (Ray started or joined here)."""
    return RayPool(ctx, ctx.cfg.workers, ctx.cfg.ray_address)
