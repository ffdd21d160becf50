"""What IniLoRA's fit costs a user, once per base model, and what the cache saves (Table 5's question).

Each repeat runs ``inilora approximate`` — the installed command, in a fresh process, on a cache of
its own — three times (:func:`measure`): on an empty cache (the CPU engine's kernel is built first,
once per machine), again without the cached fit (the cost per base model: every targeted matrix,
20000 Adam steps by default), and once more (the cache hit). Per call it records wall time, the
process's CPU time and its peak resident set (``os.wait4`` of that child alone), with the engine
and cache outcome the command reported. It prints the ratio cached / fitted (the baseline is the fit
measured in the same run) and, with ``--out``, appends one row per model and repeat to a
``results.jsonl`` as ``compare`` appends its rows (:func:`inilora.results.append_result`) for
docs/results.md's Table 5 row.

    OMP_NUM_THREADS=1 python bench/fit_cost.py --models embedded:minilm,embedded:smollm2 --repeats 3 \
        --out docs/results/fit-cost/results.jsonl

The thread count is the caller's (``OMP_NUM_THREADS``; recorded). A CPU fit here is not the
paper's 4090 figure: the row names the machine it ran on.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _call(args: list[str], env: dict[str, str]) -> dict:
    """Run one command; its wall time, CPU time and peak RSS (this child alone). A failure exits with
    the command's stderr."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{err[-2000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}  # Linux: kilobytes


def measure(model: str, steps: int, rank: int, cli: str) -> dict:
    """One repeat, three calls of the same command on a cache of its own: ``first`` on an empty cache
    (it also builds and tunes the CPU engine's kernel, once per machine), ``fit`` with the kernel
    built but no fit cached (the cost per base model), ``cached`` once the fit is in (a cache hit)."""
    with tempfile.TemporaryDirectory(prefix="inilora-fit-cost-") as tmp:
        cache = Path(tmp) / "cache"
        env = {**os.environ, "INILORA_CACHE": str(cache)}
        out: dict = {}
        for phase, expect in (("first", "miss"), ("fit", "miss"), ("cached", "hit")):
            if phase == "fit":
                shutil.rmtree(cache / "fits")
            report = Path(tmp) / f"{phase}.json"
            out[phase] = _call([cli, "approximate", "--model", model, "--rank", str(rank), "--steps", str(steps),
                                "--report", str(report)], env)
            rep = json.loads(report.read_text())
            out[phase]["cache"] = rep["info"].get("cache")
            if out[phase]["cache"] != expect:
                raise SystemExit(f"{model}, {phase}: expected a cache {expect}, got {out[phase]['cache']}")
            out["engine"], out["matrices"] = rep["info"].get("engine"), len(rep["fit"])
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="embedded:minilm,embedded:smollm2")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, help="append rows to this results.jsonl")
    args = ap.parse_args()

    import peft
    import torch
    import transformers

    import inilora
    from inilora.results import append_result
    from inilora.train.pipeline import _device_name

    cli = shutil.which("inilora") or str(Path(sys.executable).with_name("inilora"))
    threads = int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))
    device = _device_name("cpu")
    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
                "peft": peft.__version__, "inilora": inilora.__version__}
    for model in args.models.split(","):
        for repeat in range(args.repeats):
            got = measure(model, args.steps, args.rank, cli)
            fit, cached, first = got["fit"], got["cached"], got["first"]
            print(f"{model} (repeat {repeat}): {got['matrices']} matrices, {args.steps} steps, engine {got['engine']}, "
                  f"{threads} thread(s): fit {fit['wall_s']:.1f} s wall / {fit['cpu_s']:.1f} s CPU, peak RSS "
                  f"{fit['peak_rss_mib']:.0f} MiB; on an empty cache {first['wall_s']:.1f} s; cached "
                  f"{cached['wall_s']:.1f} s — "
                  f"{cached['wall_s'] / fit['wall_s']:.3f}× the fit", flush=True)
            # the keys every results.jsonl row has (docs/results.md's provenance table reads them); the
            # fit's seed is the command's default, 0; cpu_s: the three calls together
            row = {"run_id": f"{model.split(':')[-1]}_repeat={repeat}", "method": "inilora", "seed": 0,
                   "task": "approximate", "model": model, "repeat": repeat, "matrices": got["matrices"],
                   "rank": args.rank, "steps": args.steps, "engine": got["engine"], "threads": threads,
                   "first": first, "fit": fit, "cached": cached,
                   "cpu_s": round(first["cpu_s"] + fit["cpu_s"] + cached["cpu_s"], 2), "device": device,
                   "versions": versions,
                   "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
            if args.out:  # after each repeat: an interrupted run keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                append_result(args.out, row)


if __name__ == "__main__":
    main()
