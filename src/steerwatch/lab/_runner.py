"""The test runner the sandbox executes in a child process (``python -I -S _runner.py ...``): it
limits its own resources, installs an audit hook that refuses network, process creation, native
code and writes outside its directory, loads the candidate program and runs each test, writing one
JSON line per test as it goes (so a hang or crash still leaves the tests that completed).

Stand-alone on purpose: it imports only the standard library and nothing from steerwatch, and it
never runs inside the steerwatch process."""
import json
import os
import sys

_BLOCKED = frozenset([
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "os.kill", "os.killpg", "os.setuid", "os.putenv", "os.unsetenv", "ctypes.dlopen", "ctypes.dlsym",
    "ctypes.cdata", "pty.spawn", "webbrowser.open",
])
_PATH_EVENTS = frozenset(["os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
                          "os.symlink", "os.link", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile",
                          "os.chdir", "os.chroot"])
_NATIVE = frozenset(["ctypes", "_ctypes", "cffi", "mmap", "_posixsubprocess", "multiprocessing", "_multiprocessing"])
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _short(text, n=300):
    return text if len(text) <= n else text[: n - 3] + "..."


def _limit(cpu_s, mem_mb, file_mb):
    import resource

    for what, value in ((resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_AS, mem_mb << 20),
                        (resource.RLIMIT_FSIZE, file_mb << 20), (resource.RLIMIT_CORE, 0)):
        try:
            resource.setrlimit(what, (value, value))
        except (ValueError, OSError):
            pass


def _install_guard(root):
    root = os.path.realpath(root)

    def inside(path):
        if isinstance(path, int):
            return True
        try:
            path = os.fsdecode(os.fspath(path))
        except TypeError:
            return False
        full = os.path.realpath(os.path.join(root, path))
        return full == root or full.startswith(root + os.sep)

    def hook(event, args):
        if event in _BLOCKED:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args and str(args[0]).split(".")[0] in _NATIVE:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1], args[2] or 0
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(flags & _WRITE_FLAGS)
            if writes and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the sandbox directory is not allowed")
        elif event in _PATH_EVENTS:
            for a in args:
                if isinstance(a, (str, bytes, os.PathLike)) and not inside(a):
                    raise PermissionError(f"sandbox: {event} on {a!r} outside the sandbox directory is not allowed")

    sys.addaudithook(hook)


def _run_test(test, ns):
    rec = {}
    try:
        if test.get("call") is not None:
            got = eval(test["call"], ns)
            try:
                rec["got"] = _short(repr(got))
            except BaseException as exc:
                rec["got"] = f"<repr failed: {type(exc).__name__}>"
            want = eval(test["expected"], ns)
            ok = bool(got == want)
            rec["ok"] = ok
            if not ok:
                rec["error"] = "AssertionError"
        else:
            exec(compile(test["source"], "<test>", "exec"), ns)
            rec["ok"] = True
    except BaseException as exc:  # SystemExit and KeyboardInterrupt from candidate code included
        rec.update(ok=False, error=type(exc).__name__, message=_short(str(exc)))
    return rec


def main():
    solution, tests_path, out_path = sys.argv[1:4]
    cpu_s, mem_mb, file_mb = (int(x) for x in sys.argv[4:7])
    root = os.path.dirname(os.path.abspath(solution))
    with open(tests_path, encoding="utf-8") as f:
        tests = json.load(f)
    with open(solution, encoding="utf-8") as f:
        source = f.read()
    # opened before the guard and the candidate; never closed: the process ends with os._exit
    out = open(out_path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
    _limit(cpu_s, mem_mb, file_mb)
    sys.setrecursionlimit(3000)
    _install_guard(root)
    ns = {"__name__": "__solution__", "__builtins__": __builtins__}
    try:
        exec(compile(source, "solution.py", "exec"), ns)
    except BaseException as exc:
        out.write(json.dumps({"load_error": _short(f"{type(exc).__name__}: {exc}")}) + "\n")
        out.flush()
        os._exit(0)
    out.write(json.dumps({"loaded": True}) + "\n")
    for i, test in enumerate(tests):
        rec = _run_test(test, ns)
        rec["test"] = i
        out.write(json.dumps(rec) + "\n")
    out.write(json.dumps({"done": True}) + "\n")
    out.flush()
    os._exit(0)  # skip whatever the candidate registered with atexit


if __name__ == "__main__":
    main()
