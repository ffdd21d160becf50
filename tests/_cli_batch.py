"""Run many ``inilora`` command lines in one process, each in a forked child (``python _cli_batch.py
CASES.json RESULTS.json``): the console script's ``main`` as the user's shell would run it, without
paying Python's and typer's start-up once per case.

The parent imports the CLI (and, for the cases marked ``after_torch``, torch and the method registry)
once; each child runs one command line with its stdout and stderr in files and reports its exit
code and which of torch / transformers / peft it imported itself.  The parent hashes the folders a
case names before and after it, so a refusal that touched a file is pinned on the case that did it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

LIBRARIES = ("torch", "transformers", "peft")
TIMEOUT_S = 120.0


def tree(root: str) -> dict[str, str]:
    out = {}
    base = Path(root)
    for p in sorted(base.rglob("*")):
        rel = p.relative_to(base).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def run_one(case: dict, work: Path) -> dict:
    out, err, res = work / "out", work / "err", work / "res"
    before = {root: tree(root) for root in case["hashed"]}
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: one command line, as the console script runs it
        code = 3
        try:
            os.chdir(case["cwd"])
            fd_out, fd_err = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd_out, 1)
            os.dup2(fd_err, 2)
            loaded = set(sys.modules)
            from inilora.cli import main

            sys.argv = ["inilora", *case["argv"]]
            try:
                main(case["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            new = {m.split(".")[0] for m in set(sys.modules) - loaded}
            Path(res).write_text(json.dumps({"code": code, "imported": sorted(new & set(LIBRARIES))}))
        except BaseException as exc:  # noqa: BLE001 - reported, never raised past the fork
            Path(res).write_text(json.dumps({"code": 99, "imported": [], "crash": repr(exc)}))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    deadline = time.time() + TIMEOUT_S
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
        time.sleep(0.005)
    wall = time.perf_counter() - t0
    result = json.loads(res.read_text()) if res.is_file() else {"code": None, "imported": [], "crash": "timed out"}
    result.update(stdout=out.read_text(errors="replace") if out.is_file() else "",
                  stderr=err.read_text(errors="replace") if err.is_file() else "", wall_s=wall,
                  touched=[root for root in case["hashed"] if tree(root) != before[root]])
    for p in (out, err, res):
        p.unlink(missing_ok=True)
    return result


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    work = Path(sys.argv[2]).with_suffix(".work")
    work.mkdir(exist_ok=True)
    import inilora.cli  # noqa: F401 - what every child would import first
    import inilora.config  # noqa: F401 - and the torch-free layers the commands read configs with
    import inilora.demo  # noqa: F401
    import inilora.outdir  # noqa: F401
    import inilora.report  # noqa: F401
    import inilora.runner  # noqa: F401
    from inilora.tasks import available_tasks

    available_tasks()  # the task registry, filled once
    heavy = [lib for lib in LIBRARIES if lib in sys.modules]
    assert not heavy, f"the torch-free layers imported {heavy}"  # else no child could show it
    results = {}
    for phase in (False, True):
        if phase:  # the cases refused after the method registry: only transformers must not load
            import inilora.methods  # noqa: F401
        for case in cases:
            if case["after_torch"] == phase:
                results[case["id"]] = run_one(case, work)
    Path(sys.argv[2]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
