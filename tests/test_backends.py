"""Grids on Ray (a local 2-CPU instance) give the rows the in-process backend gives, and survive a
worker SIGKILLed mid-run and a driver killed mid-grid. Real training (MiniLM, 4 steps per run).

The Ray tests skip when Ray is not installed (``pip install 'inilora[ray]'``)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from inilora.backends import InProcess, Processes, RayBackend, get_backend
from inilora.config import CompareConfig, ConfigError, TrainConfig, to_dict
from inilora.runner import read_results, run_grid

try:
    import ray
except ImportError:  # the [ray] extra is optional: the seam's own checks below still run
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="Ray is not installed (pip install 'inilora[ray]')")

# 4 optimizer steps, a checkpoint after each (the killed worker's retry resumes from one)
BASE = TrainConfig(model="embedded:minilm", task="offline-topic", train_size=16, eval_size=8, max_length=16,
                   epochs=1, batch_size=4, learning_rate=1e-3, logging_steps=1, save_steps=1, device="cpu")


def grid(root: Path, seeds=(0, 1)) -> CompareConfig:
    return CompareConfig(base=BASE, methods=["lora", "gaussian"], seeds=list(seeds), output_dir=str(root),
                         resources={"num_cpus": 1}, title="ray")


def comparable(rows: list[dict]) -> list[tuple]:
    """What must agree across backends: ids, metrics and every logged loss (not timings or paths)."""
    return sorted((r["run_id"], json.dumps(r["metrics"], sort_keys=True), json.dumps(r["train_loss"])) for r in rows)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The grid run in-process, uninterrupted, with torch on one thread as each Ray task (num_cpus=1) has."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_grid(grid(tmp_path_factory.mktemp("ref") / "grid"), progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs: two runs at a time."""
    for attempt in range(3):  # Ray gives its node 30 s to start: a heavily shared CI machine can miss that
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # workers inherit this environment
            break
        except Exception as exc:  # noqa: BLE001 - only Ray's startup timeout is retried
            ray.shutdown()
            if "timed out during startup" not in str(exc) or attempt == 2:
                raise
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@needs_ray
def test_ray_grid_gives_the_in_process_rows(reference, local_ray, tmp_path):
    root = tmp_path / "grid"
    rows = run_grid(grid(root), progress=False, backend=RayBackend(resources={"num_cpus": 1}))
    assert len(rows) == 4 and comparable(rows) == comparable(reference)
    assert {r["threads"] for r in rows} == {1}  # Ray gave each task its one CPU
    assert len((root / "results.jsonl").read_text().splitlines()) == 4


def kill_once_mid_run(config, *, marker: str, progress=False):
    """The training pipeline, but the first attempt of ``lora, seed 0`` SIGKILLs its own worker after step 2
    (its checkpoint-2 on disk): Ray retries the task, which resumes from the checkpoint."""
    from transformers import TrainerCallback

    from inilora.train import run

    marker = Path(marker)

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 2 and config.method == "lora" and config.seed == 0 and not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)

    return run(config, progress=False, callbacks=[Kill()])


@needs_ray
def test_worker_sigkilled_mid_run_loses_and_duplicates_nothing(reference, local_ray, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    marker = tmp_path / "killed"
    root = tmp_path / "grid"
    rows = run_grid(grid(root, seeds=[0]), run_fn=functools.partial(kill_once_mid_run, marker=str(marker)),
                    progress=False, backend=RayBackend(resources={"num_cpus": 1}))
    assert marker.exists(), "the worker was not killed: the test proved nothing"
    assert len((root / "results.jsonl").read_text().splitlines()) == 2
    assert comparable(rows) == comparable([r for r in reference if r["seed"] == 0])
    resumed = json.loads((root / "runs" / "lora_seed=0" / "metrics.json").read_text())
    assert resumed["resumed_from"] == "checkpoint-2"


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import functools, ray, test_runner
ray.cloudpickle.register_pickle_by_value(test_runner)  # the workers cannot import the tests
from inilora.backends import RayBackend
from inilora.config import load_yaml, CompareConfig
from inilora.runner import run_grid
# the runs' duration is bound into the function: Ray's workers have the cluster's environment, not ours
fake_run = functools.partial(test_runner.fake_run, sleep=float(sys.argv[3]))
run_grid(load_yaml(sys.argv[1], CompareConfig), run_fn=fake_run, progress=False,
         backend=RayBackend(sys.argv[2], resources={{"num_cpus": 1}}))
"""


@needs_ray
def test_driver_killed_mid_grid_resumes_in_process_to_the_same_rows(local_ray, tmp_path):
    """The bookkeeping, with test_runner's fake runs (1 s each, same contract as training): a driver
    SIGKILLed with runs in flight on the cluster; the grid resumed on the other backend."""
    from test_runner import fake_run, grid as fake_grid

    cfg = fake_grid(tmp_path, seeds=[0, 1, 2], sweep={"lora.rank": [8]})
    root = Path(cfg.output_dir)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    script = DRIVER.format(tests=str(Path(__file__).parent))
    driver = subprocess.Popen([sys.executable, "-c", script, str(path), local_ray, "1.0"], env=env,
                              start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_results(root)) < 2 and driver.poll() is None:
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and anything it started in its session
    driver.wait()
    killed_at = len(read_results(root))
    assert 2 <= killed_at < 6, f"the kill must land mid-grid ({killed_at} rows)"
    time.sleep(1)  # Ray cancels the tasks of a dead driver (their owner)
    rows = run_grid(cfg, run_fn=fake_run, progress=False, backend=InProcess())  # resumed on the other backend
    lines = (root / "results.jsonl").read_text().splitlines()
    assert len(lines) == 6 and len({json.loads(x)["run_id"] for x in lines}) == 6
    reference = run_grid(fake_grid(tmp_path / "ref", seeds=[0, 1, 2], sweep={"lora.rank": [8]}), run_fn=fake_run,
                         progress=False)
    assert comparable(rows) == comparable(reference)


def test_processes_grid_gives_the_in_process_rows(reference, tmp_path):
    """Two one-thread worker processes side by side: the rows the in-process grid gives on one thread."""
    root = tmp_path / "grid"
    rows = run_grid(grid(root), progress=False, backend=Processes(workers=2, threads=1))
    assert len(rows) == 4 and comparable(rows) == comparable(reference)
    assert {r["threads"] for r in rows} == {1}
    assert len((root / "results.jsonl").read_text().splitlines()) == 4


def fail_for_gaussian(config, *, progress=False):
    """A run that fails for one method (a worker process imports it from this module)."""
    from test_runner import fake_run

    if config.method == "gaussian" and config.seed == 1:
        raise ConfigError("gaussian seed 1 failed on purpose")
    return fake_run(config, progress=progress)


def test_processes_record_the_runs_in_flight_then_raise_the_failure_as_it_was(tmp_path):
    from test_runner import grid as fake_grid

    cfg = fake_grid(tmp_path, methods=["lora", "gaussian"], seeds=[0, 1], sweep={})
    with pytest.raises(ConfigError, match="gaussian seed 1 failed on purpose"):
        run_grid(cfg, run_fn=fail_for_gaussian, progress=False, backend=Processes(workers=2))
    done = {json.loads(x)["run_id"] for x in (Path(cfg.output_dir) / "results.jsonl").read_text().splitlines()}
    assert "gaussian_seed=1" not in done and {"lora_seed=0", "lora_seed=1"} <= done


def pid_then_wait(config, *, progress=False):
    """A run that records its worker's pid, then outlasts any test (a worker process imports it from here)."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "worker.pid").write_text(str(os.getpid()))
    time.sleep(600)
    raise AssertionError("the worker outlived its driver")


PROCESSES_DRIVER = """
import contextlib
import sys
sys.path.insert(0, {tests!r})
from test_backends import pid_then_wait
from inilora.backends import Processes
from inilora.config import load_yaml, CompareConfig
from inilora.errors import Terminated, sigterm_as_interrupt
from inilora.runner import run_grid
try:
    with sigterm_as_interrupt() if sys.argv[2] == "cli" else contextlib.nullcontext():  # as the CLI's main, or none
        run_grid(load_yaml(sys.argv[1], CompareConfig), run_fn=pid_then_wait, progress=False,
                 backend=Processes(workers=2))
except Terminated:
    sys.exit(143)
"""


def _pids(cfg: CompareConfig) -> dict[str, int]:
    """The worker pid each started run recorded (a file still being written is skipped)."""
    found = {}
    for f in Path(cfg.output_dir).rglob("worker.pid"):
        text = f.read_text()
        if text:
            found[f.parent.name] = int(text)
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a non-reaping init counts as gone)."""
    status = Path(f"/proc/{pid}/status")
    if Path("/proc/self").exists():  # Linux: read the state (a zombie is dead)
        try:
            return "\nState:\tZ" not in status.read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_processes_workers_die_with_their_driver(tmp_path):
    """A driver stopped by `kill` (not Ctrl-C: that reaches the whole process group) leaves no worker
    training on into run folders that a restarted driver would start again. Two drivers at once:
    SIGTERM to one that raises it as the CLI does (it ends its workers and shuts its pool down: exit
    143, no leaked semaphores); SIGKILL to one that runs no handler (its workers see their parent go)."""
    from test_runner import grid as fake_grid

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    drivers, cfgs = {}, {}
    for sig, mode in ((signal.SIGTERM, "cli"), (signal.SIGKILL, "bare")):
        cfgs[sig] = cfg = fake_grid(tmp_path / mode, methods=["lora", "gaussian"], seeds=[0], sweep={})
        path = tmp_path / f"{mode}.yaml"
        path.write_text(yaml.safe_dump(to_dict(cfg)))
        drivers[sig] = subprocess.Popen([sys.executable, "-c", PROCESSES_DRIVER.format(tests=str(Path(__file__).parent)),
                                         str(path), mode], env=env, start_new_session=True, stderr=subprocess.PIPE,
                                        text=True)
    try:
        deadline = time.time() + 240  # a wait, not a timing: each driver first checks every cell
        while time.time() < deadline and any(len(_pids(c)) < 2 for c in cfgs.values()):
            assert all(d.poll() is None for d in drivers.values()), "a driver ended before its workers started"
            time.sleep(0.05)
        workers = {sig: list(_pids(c).values()) for sig, c in cfgs.items()}
        assert all(len(set(w)) == 2 for w in workers.values()), f"two runs, two workers each: {workers}"
        assert all(_alive(w) for ws in workers.values() for w in ws)
        for sig, driver in drivers.items():
            driver.send_signal(sig)  # the driver alone, as `kill PID` or a job scheduler sends it
        _, err = drivers[signal.SIGTERM].communicate(timeout=120)  # the pool's tracker too has closed stderr
        assert drivers[signal.SIGTERM].returncode == 143, err
        assert "leaked" not in err and "Traceback" not in err, err
        drivers[signal.SIGKILL].wait(timeout=30)
        deadline = time.time() + 30  # the watch polls every 0.5 s; the margin is for a loaded machine
        while time.time() < deadline and any(_alive(w) for ws in workers.values() for w in ws):
            time.sleep(0.1)
        assert not any(_alive(w) for ws in workers.values() for w in ws), "a worker outlived its driver"
    finally:
        for driver in drivers.values():
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
        for cfg in cfgs.values():
            for pid in _pids(cfg).values():  # never leave a 600 s sleeper behind
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_processes_share_the_cores():
    assert Processes(threads=1).workers >= 1 and Processes(workers=3, threads=2).workers == 3
    opts = get_backend("processes", resources={"num_cpus": 2})
    assert isinstance(opts, Processes) and opts.threads == 2


def test_backend_names_and_ray_options_are_checked():
    with pytest.raises(ConfigError, match="unknown backend 'dask'"):
        get_backend("dask")
    for name in ("in-process", "processes"):
        with pytest.raises(ConfigError, match="--address applies to --backend ray only"):
            get_backend(name, address="auto")
    opts = RayBackend(resources={"num_gpus": 1, "num_cpus": 2, "memory": 1e9, "node:big": 0.5}).options()
    assert opts == {"num_cpus": 2, "num_gpus": 1, "memory": 1e9, "resources": {"node:big": 0.5}, "max_retries": 2}
    assert replace(grid(Path("x")), resources={}).resources == {}


def test_cli_refuses_an_unknown_backend_before_any_work(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(to_dict(grid(tmp_path / "grid"))))
    cli = Path(sys.executable).with_name("inilora")
    for args, message in ((["--backend", "dask"], "unknown backend 'dask'; known: in-process, processes, ray"),
                          (["--address", "auto"], "--address applies to --backend ray only")):
        proc = subprocess.run([str(cli), "compare", str(path), *args], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "grid").exists()


LEAK_SCRIPT = """
import multiprocessing as mp, sys, time
sys.path.insert(0, {tests!r})
from test_backends import bar_then_wait
if __name__ == "__main__":
    drawn = mp.get_context("spawn").Event()
    p = mp.get_context("spawn").Process(target=bar_then_wait, args=(sys.argv[1] == "worker", drawn))
    p.start()
    drawn.wait(90)  # the bar is drawn once the child has imported (seconds; more on a loaded machine)
    p.terminate()
    p.join()
"""


def bar_then_wait(as_worker: bool, drawn) -> None:
    """A process that draws a tqdm bar, as the libraries do while training, then is ended mid-run
    (``drawn`` is set once the bar is done, so the parent ends it then, however slow the import)."""
    from tqdm import tqdm

    from inilora.backends import _worker_init

    if as_worker:
        _worker_init(1)
    list(tqdm(range(3)))
    drawn.set()
    time.sleep(60)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_worker_ended_mid_run_leaks_no_semaphore():
    """tqdm's default lock is a multiprocessing semaphore: a pool worker terminated after drawing a bar
    left it to Python's resource tracker, which warned of it as leaked when the driver exited (once per
    worker, after SIGTERM to `inilora compare --backend processes`). A worker's bars get a thread lock."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    script = LEAK_SCRIPT.format(tests=str(Path(__file__).parent))
    runs = {mode: subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True, text=True,
                                 timeout=120) for mode in ("worker", "bare")}
    assert all("3/3" in r.stderr and "Traceback" not in r.stderr for r in runs.values()), runs  # each drew its bar
    assert "leaked semaphore" in runs["bare"].stderr  # the check can see a leak
    assert "leaked semaphore" not in runs["worker"].stderr, runs["worker"].stderr
