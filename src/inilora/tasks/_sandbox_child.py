"""Child side of :mod:`inilora.tasks.sandbox`, run as a script (``python -I -B``), never imported.

Order matters: read the nonce, set the rlimits, install the audit hook, then run the program. The
hook cannot be removed by the code it watches (``sys.addaudithook`` has no inverse); it refuses
sockets, new processes, signals to other processes, foreign calls through ctypes, raising rlimits, writes and path
changes outside the work folder. It guards against accidents (a completion that writes files,
spawns processes, reaches the network); the kernel-enforced layers are the rlimits and, where
available, the network namespace. Success is signalled by echoing the parent's nonce after the
program returns, so ``sys.exit(0)`` / ``os._exit(0)`` before the tests ran is not a pass.
"""

import os
import resource
import sys


def main() -> None:
    workdir, cpu_s, mem_bytes, fsize_bytes, nproc, guard = sys.argv[1:7]
    nonce = sys.stdin.readline().strip()
    status_fd = os.dup(1)
    sys.stdin = open(os.devnull)  # noqa: SIM115 (lives as long as the process)
    cpu, mem, fsize, nprocs = int(cpu_s), int(mem_bytes), int(fsize_bytes), int(nproc)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_NPROC, (nprocs, nprocs))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.chdir(workdir)
    with open("program.py", encoding="utf-8") as fh:
        source = fh.read()
    if guard == "1":
        sys.addaudithook(_make_hook(os.path.realpath(workdir)))
    scope = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(source, "program.py", "exec"), scope)  # noqa: S102 (the point of a sandbox)
    except BaseException as exc:  # noqa: BLE001 (SystemExit too: exiting early is no pass)
        import traceback

        traceback.print_exception(exc)
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    os.write(status_fd, f"\n{nonce}\n".encode())
    os._exit(0)


def _make_hook(root: str):
    realpath, join, getcwd = os.path.realpath, os.path.join, os.getcwd
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    # ctypes may load libraries (numpy imports it) but not look up or call foreign functions
    deny_prefixes = (
        "socket.", "subprocess.", "os.fork", "os.exec", "os.spawn", "os.posix_spawn", "os.system", "pty.",
        "os.kill", "signal.pthread_kill", "resource.setrlimit", "resource.prlimit", "sys.remote_exec",
        "webbrowser.", "winreg.", "ctypes.dlsym", "ctypes.call_function", "ctypes.cdata", "ctypes.string_at",
        "ctypes.wstring_at", "ctypes.addressof",
    )
    one_path = {"os.remove", "os.rmdir", "os.mkdir", "os.chdir", "os.chmod", "os.chown", "os.truncate",
                "os.utime", "os.setxattr", "os.removexattr", "shutil.rmtree", "os.chflags"}
    two_paths = {"os.rename", "os.link", "os.symlink"}
    allowed = {os.devnull}

    def inside(path: object) -> bool:
        if isinstance(path, int):
            return True  # an already open descriptor
        try:
            full = realpath(join(getcwd(), os.fsdecode(path)))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        return full == root or full.startswith(root + os.sep) or full in allowed

    def deny(event: str) -> None:
        raise PermissionError(f"sandbox: {event} is not allowed here")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
            if writes and not inside(path):
                deny(f"writing {path!r}")
        elif event.startswith(deny_prefixes):
            deny(event)
        elif event in one_path:
            if not inside(args[0]):
                deny(f"{event} on {args[0]!r}")
        elif event in two_paths:
            if not inside(args[1]) or (event != "os.symlink" and not inside(args[0])):
                deny(f"{event} on {args[0]!r} → {args[1]!r}")
        elif event == "object.__setattr__" and args[0] is hook:
            deny("changing the sandbox's hook")

    return hook


if __name__ == "__main__":
    main()
