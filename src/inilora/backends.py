"""Where a grid's runs execute: one seam, "run these cells, yield each finished result".

The runner owns the grid's bookkeeping (which runs are finished, the one ``results.jsonl``, the
progress display); a backend only executes runs and hands back ``(run, result)`` pairs as they
finish, in any order. Three implementations:

- :class:`InProcess` (the default): one run after another in this process.
- :class:`Processes`: several runs at once on this machine, each in a worker process with its own
  share of the cores. Small models on a few CPU cores use threads poorly (a decode step of a 135M
  model is a string of small matmuls and Python): two one-thread runs side by side finish ≈ 1.5×
  sooner than the same two runs one after another on two threads (2 Zen 3 cores, the demo's runs).
- :class:`RayBackend`: each run is a Ray task asking for the config's ``resources`` (``num_cpus``,
  ``num_gpus``, ...), on a local Ray instance started here, or on a cluster (``address``). Only the
  driver writes ``results.jsonl``; a worker writes only its run's own folder, so a worker killed
  mid-run loses nothing finished (Ray retries the task, which resumes from the folder), and a killed
  driver restarts on whatever backend, re-reading finished folders instead of re-running them.

A run folder left behind without ``metrics.json`` and without a complete Trainer checkpoint is wiped
before its run starts (:func:`run_cell`), on whichever process executes it: a Ray retry included.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

BACKENDS = ("in-process", "processes", "ray")
#: where models, data and fits live, and whether to go online: the driver's settings reach the workers
FORWARDED_ENV = ("INILORA_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
RunFn = Callable[..., dict]


class Cell(Protocol):  # the runner's PlannedRun: what a backend needs of a run
    run_id: str
    config: Any  # a TrainConfig


class Backend(Protocol):
    name: str

    def run(self, cells: Sequence[Cell], run_fn: RunFn | None, *, may_start: Callable[[], bool] = ...,
            on_start: Callable[[Cell], None] | None = None, progress: bool = False) -> Iterator[tuple[Cell, dict]]:
        """Execute ``cells``; yield ``(cell, result)`` as each finishes. ``run_fn(config, progress=...)``
        runs one TrainConfig (``None``: the training pipeline); ``may_start()`` false: start no more."""


def _resumable(out: Path) -> bool:
    """A complete Trainer checkpoint (its state file is written last): the pipeline resumes from it."""
    return any((ckpt / "trainer_state.json").is_file() for ckpt in out.glob("checkpoint-*"))


def run_cell(run_fn: RunFn, config: Any, progress: bool = False) -> dict:
    """One run, wherever it executes: a partial folder without a usable checkpoint is started again cleanly."""
    out = Path(config.output_dir)
    if out.exists() and not (out / "metrics.json").is_file() and not _resumable(out):
        shutil.rmtree(out)
    return run_fn(config, progress=progress)


def _always() -> bool:
    return True


class InProcess:
    """Runs cells one after another here (the default): exceptions propagate at once."""

    name = "in-process"

    def run(self, cells, run_fn, *, may_start=_always, on_start=None, progress=False):
        if run_fn is None:
            from .train import run as run_fn
        for cell in cells:
            if not may_start():
                return
            if on_start:
                on_start(cell)
            yield cell, run_cell(run_fn, cell.config, progress)


def cores() -> int:
    """The CPU cores this process may use (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _worker_init(threads: int, driver: int | None = None) -> None:
    """A pool worker's torch gets ``threads`` intra-op threads (OpenMP's too: set before torch loads).

    With ``driver`` (the pool owner's pid), the worker also exits once that process is gone: a driver
    stopped by SIGTERM or SIGKILL runs no cleanup, and its orphaned workers would otherwise train on for
    minutes, racing a restarted driver for the same run folders."""
    import threading

    from tqdm import tqdm

    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    # a worker runs quietly, so its bars never share a terminal with another process; tqdm's default
    # lock is a multiprocessing semaphore that a worker ended mid-run (the driver stopped) never
    # releases, and Python's resource tracker then reports it as leaked
    tqdm.set_lock(threading.RLock())
    if driver is not None:
        threading.Thread(target=_exit_with, args=(driver,), name="inilora-driver-watch", daemon=True).start()
    import torch

    torch.set_num_threads(threads)


def _exit_with(driver: int, every_s: float = 0.5) -> None:
    """Ends this process once its parent is no longer ``driver`` (an orphan is re-parented). The run in
    flight stops mid-step; that is safe: a folder without ``metrics.json`` resumes from its last complete
    checkpoint or starts again (:func:`run_cell`)."""
    import time

    while os.getppid() == driver:
        time.sleep(every_s)
    os._exit(1)


class Processes:
    """Runs up to ``workers`` cells at once in spawned worker processes of this machine, ``threads``
    torch threads each. Like Ray, only this process writes ``results.jsonl``; a failed run lets the
    runs in flight finish (their rows are recorded), then its exception is raised as it was. A driver
    stopped (Ctrl-C; SIGTERM, which the CLI raises as :class:`~inilora.errors.Terminated`) ends its
    workers' runs and shuts the pool down; one killed outright (SIGKILL, or SIGTERM without that
    handler) takes its workers with it within a second (:func:`_exit_with`). A run stopped mid-step
    resumes from its last complete checkpoint."""

    name = "processes"

    def __init__(self, workers: int | None = None, threads: int = 1) -> None:
        self.threads = max(1, int(threads))
        self.workers = max(1, workers if workers is not None else cores() // self.threads)

    def run(self, cells, run_fn, *, may_start=_always, on_start=None, progress=False):
        import concurrent.futures as cf
        import multiprocessing as mp

        fn = run_fn or _train_quietly
        queue = list(cells)
        failure: BaseException | None = None
        # spawn, not fork: a forked child inherits this process's torch thread pools and locks
        with cf.ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                    initargs=(self.threads, os.getpid())) as pool:
            pending: dict[cf.Future, Cell] = {}
            try:
                while queue or pending:
                    while queue and len(pending) < self.workers and failure is None and may_start():
                        cell = queue.pop(0)
                        if on_start:
                            on_start(cell)
                        pending[pool.submit(run_cell, fn, cell.config, False)] = cell
                    if not pending:
                        break
                    done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for future in done:
                        cell = pending.pop(future)
                        try:
                            result = future.result()
                        except BaseException as exc:  # noqa: BLE001 - raised once the runs in flight are in
                            failure = failure or exc
                            continue
                        yield cell, result
            except BaseException:  # stopped (Ctrl-C, SIGTERM as Terminated, the caller's error): end the
                # runs in flight, as the driver's death would (:func:`_exit_with`) — a signal to the driver
                # alone reaches no worker, and the pool's exit would otherwise wait for their runs to finish
                for process in mp.active_children():
                    process.terminate()
                raise
            finally:
                for future in pending:  # stopped early (an error, Ctrl-C): start nothing more
                    future.cancel()
        if failure is not None:
            raise failure


def _train_quietly(config: Any, *, progress: bool = False) -> dict:
    """The pipeline on a Ray worker: no bars or load reports in the driver's log."""
    from transformers.utils import logging as hf_logging

    from .train import run

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    return run(config, progress=False)


def _remote_cell(run_fn: RunFn | None, config: Any) -> dict:
    return run_cell(run_fn or _train_quietly, config, False)


class RayBackend:
    """Each cell a Ray task with ``resources`` per run. ``address=None`` starts a local instance
    (``num_cpus`` of it: the machine's by default); ``"auto"`` or ``ray://host:10001`` joins a cluster.

    Every node must see the grid's ``output_dir`` at the same path (a shared filesystem): the driver
    checks each run's ``metrics.json`` there before recording its row. A task whose worker dies is
    retried ``max_retries`` times (it resumes from its folder); a task that still fails does not stop
    the runs in flight: their rows are recorded first, then the failure is raised."""

    name = "ray"

    def __init__(self, address: str | None = None, resources: Mapping[str, float] | None = None, *,
                 num_cpus: int | None = None, max_retries: int = 2) -> None:
        self.address = address
        self.resources = dict(resources or {})
        self.num_cpus = num_cpus
        self.max_retries = max_retries

    def _init(self):
        try:
            import ray
        except ImportError:
            raise RuntimeError("the ray backend needs Ray: pip install 'inilora[ray]' "
                               "(or scripts/bootstrap.sh --with ray)") from None
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
            if self.address:  # a cluster's workers inherit their node's environment, not this shell's
                kw["address"] = self.address
                env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
                if env:
                    kw["runtime_env"] = {"env_vars": env}
            elif self.num_cpus:
                kw["num_cpus"] = self.num_cpus
            ray.init(**kw)
        return ray

    def options(self) -> dict[str, Any]:
        """Ray task options: ``num_cpus``/``num_gpus``/``memory`` as such, any other key a custom resource."""
        res = dict(self.resources)
        opts: dict[str, Any] = {"num_cpus": res.pop("num_cpus", 1), "max_retries": self.max_retries}
        for key in ("num_gpus", "memory"):
            if key in res:
                opts[key] = res.pop(key)
        if res:
            opts["resources"] = res
        return opts

    def run(self, cells, run_fn, *, may_start=_always, on_start=None, progress=False):
        ray = self._init()
        task = ray.remote(_remote_cell).options(**self.options())
        pending: dict[Any, Cell] = {}
        failures: list[str] = []
        queue = list(cells)
        # submit at most what the cluster can run at once, plus one, so a deadline still holds
        window = max(1, int(ray.cluster_resources().get("CPU", 1) // max(self.options()["num_cpus"], 1e-9))) + 1
        try:
            while queue or pending:
                while queue and len(pending) < window and not failures and may_start():
                    cell = queue.pop(0)
                    if on_start:
                        on_start(cell)
                    pending[task.remote(run_fn, cell.config)] = cell
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except Exception as exc:  # noqa: BLE001 - recorded, raised once the others are in
                    failures.append(f"{cell.run_id}: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}")
                    continue
                yield cell, result
        finally:
            for ref in pending:  # the driver stops early (an error, Ctrl-C): no orphan keeps writing
                ray.cancel(ref, force=True)
        if failures:
            raise RuntimeError(f"{len(failures)} run(s) failed on Ray: " + "; ".join(failures))


def get_backend(name: str, *, address: str | None = None, resources: Mapping[str, float] | None = None,
                num_cpus: int | None = None) -> Backend:
    """A backend by name; ``address`` only applies to Ray; ``processes`` gives each run
    ``resources.num_cpus`` threads (default 1) and runs as many at once as the cores allow."""
    from .config import ConfigError

    if name not in BACKENDS:
        raise ConfigError(f"--backend: unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if address and name != "ray":
        raise ConfigError("--address applies to --backend ray only")
    if name == "in-process":
        return InProcess()
    if name == "processes":
        return Processes(threads=int((resources or {}).get("num_cpus", 1)))
    return RayBackend(address, resources, num_cpus=num_cpus)
