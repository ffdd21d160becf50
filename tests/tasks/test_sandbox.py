"""The HumanEval sandbox against hostile programs. Every hostile program is bounded on its own (a
fork loop of 5, a 3 s timeout), so a sandbox failure fails the test instead of hanging the machine."""

from __future__ import annotations

import os
import shutil

import pytest

from inilora.tasks.sandbox import Limits, isolation, run_program, run_programs

FAST = Limits(timeout_s=3.0)


def test_correct_passes_and_wrong_fails():
    ok, bad = run_programs(["def f(x):\n    return x + 1\nassert f(1) == 2\nprint('noise')",
                            "def f(x):\n    return x\nassert f(1) == 2"], FAST, workers=2)
    assert ok.passed and ok.status == "passed"
    assert not bad.passed and bad.status == "failed" and "AssertionError" in bad.detail


def test_exiting_early_is_not_a_pass():
    for program in ("import sys\nsys.exit(0)\nassert False", "import os\nos._exit(0)\nassert False"):
        assert not run_program(program, FAST).passed


def test_infinite_loop_times_out():
    r = run_program("while True:\n    pass", Limits(timeout_s=1.5, cpu_s=30))
    assert r.status == "timeout" and r.seconds < 10


def test_cpu_rlimit_kills_before_the_wall_clock():
    r = run_program("while True:\n    pass", Limits(timeout_s=8.0, cpu_s=1))
    assert r.status == "failed" and "SIGXCPU" in r.detail
    assert r.seconds < 6


@pytest.mark.parametrize("guard", [True, False])
def test_memory_bomb_hits_the_address_space_limit(guard):
    r = run_program("x = bytearray(3 * 1024 ** 3)\nprint(len(x))", Limits(timeout_s=5.0, memory_mb=512), guard=guard)
    assert not r.passed and "MemoryError" in r.detail


def test_file_size_limit():
    r = run_program("open('big.bin', 'wb').write(b'0' * (2 << 20))", Limits(timeout_s=5.0, file_size_mb=1), guard=False)
    assert not r.passed and "File too large" in r.detail


def test_fork_bomb_is_refused():
    r = run_program("import os\nfor _ in range(5):\n    os.fork()", FAST)
    assert not r.passed and "os.fork" in r.detail
    r = run_program("import subprocess\nsubprocess.run(['true'])", FAST)
    assert not r.passed and "subprocess" in r.detail


@pytest.mark.skipif(os.geteuid() == 0, reason="the kernel does not apply RLIMIT_NPROC to root")
def test_nproc_rlimit_alone_stops_fork():
    # without the audit hook: one bounded fork attempt; a forked child would exit at once
    program = ("import os\ntry:\n    pid = os.fork()\nexcept OSError:\n    pass\nelse:\n"
               "    if pid == 0:\n        os._exit(0)\n    raise AssertionError('fork succeeded')")
    assert run_program(program, FAST, guard=False).passed


def test_limits_are_set_in_the_child():
    program = ("import resource as r\n"
               "assert r.getrlimit(r.RLIMIT_AS)[0] == 300 << 20\n"
               "assert r.getrlimit(r.RLIMIT_CPU)[0] == 2\n"
               "assert r.getrlimit(r.RLIMIT_FSIZE)[0] == 3 << 20\n"
               "assert r.getrlimit(r.RLIMIT_NPROC)[0] == 0\n")
    assert run_program(program, Limits(timeout_s=2.0, memory_mb=300, file_size_mb=3)).passed


def test_writes_outside_the_work_folder_fail_inside_succeed(tmp_path):
    target = tmp_path / "escaped.txt"
    for program in (f"open({str(target)!r}, 'w').write('x')",
                    f"import os\nos.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))",
                    f"import os\nos.symlink({str(target)!r}, 'link')\nopen('link', 'w').write('x')",
                    f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')"):
        assert not run_program(program, FAST).passed
        assert not target.exists()
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    assert not run_program(f"import os\nos.remove({str(keep)!r})", FAST).passed
    assert keep.read_text() == "mine"
    inside = "open('x.txt', 'w').write('hi')\nimport tempfile\ntempfile.NamedTemporaryFile().write(b'y')\n" \
             "assert open('x.txt').read() == 'hi'"
    assert run_program(inside, FAST).passed


def test_sockets_fail():
    for program in ("import socket\nsocket.socket()",
                    "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)",
                    "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9', timeout=1)"):
        r = run_program(program, FAST)
        assert not r.passed and "socket" in r.detail


def test_other_escapes_are_refused():
    for program in ("import ctypes\nctypes.CDLL(None).getpid()", "import ctypes\nctypes.string_at(1, 1)",
                    "import os, signal\nos.kill(os.getppid(), signal.SIGTERM)",
                    "import resource as r\nr.setrlimit(r.RLIMIT_AS, (-1, -1))"):
        assert not run_program(program, FAST).passed


def test_numpy_still_imports():
    # numpy imports ctypes: loading libraries is allowed, looking up foreign functions is not
    assert run_program("import numpy as np\nassert int(np.arange(4).sum()) == 6", Limits(timeout_s=20.0)).passed


def test_isolation_reports_a_known_mode(monkeypatch):
    from inilora.tasks import sandbox

    assert isolation() in ("netns", "socket-disabled")
    if shutil.which("unshare") is None:
        assert isolation() == "socket-disabled"
    sandbox._netns_prefix.cache_clear()
    monkeypatch.setenv("INILORA_SANDBOX_NETNS", "0")
    try:
        assert isolation() == "socket-disabled"
        assert not run_program("import socket\nsocket.socket()", FAST).passed
    finally:
        sandbox._netns_prefix.cache_clear()


def test_network_namespace_has_only_loopback():
    if isolation() != "netns":
        pytest.skip("no network namespace on this machine")
    program = "import socket\nassert [n for _, n in socket.if_nameindex()] == ['lo'], socket.if_nameindex()"
    assert run_program(program, FAST, guard=False).passed


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"),
                    reason="needs root to drop to an unprivileged user with the system python")
def test_nproc_rlimit_stops_fork_for_an_unprivileged_user():
    """As root the kernel skips RLIMIT_NPROC: check the child's limit as user nobody instead."""
    import tempfile
    from pathlib import Path

    from inilora.tasks import sandbox

    tmp_path = Path(tempfile.mkdtemp(prefix="inilora-nproc-"))  # pytest's tmp_path is private to root
    try:
        _run_child_as_nobody(tmp_path, Path(sandbox.__file__).with_name("_sandbox_child.py"))
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _run_child_as_nobody(tmp_path, child):
    import subprocess

    shutil.copy(child, tmp_path / "child.py")
    (tmp_path / "program.py").write_text("import os\ntry:\n    pid = os.fork()\nexcept OSError:\n    pass\nelse:\n"
                                         "    if pid == 0:\n        os._exit(0)\n    raise AssertionError('forked')\n")
    tmp_path.chmod(0o777)
    for f in tmp_path.iterdir():
        f.chmod(0o644)
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-I", "-B",
            str(tmp_path / "child.py"), str(tmp_path), "5", str(1 << 30), str(1 << 24), "0", "0"]
    done = subprocess.run(argv, check=False, input="n0nce\n", capture_output=True, text=True, timeout=30, cwd=tmp_path)
    if done.returncode != 0 and "Permission denied" in done.stderr:
        pytest.skip(f"user nobody cannot run the child here: {done.stderr[-200:]}")
    assert done.returncode == 0 and done.stdout.rstrip().endswith("n0nce"), done.stderr
