"""Run candidate code against tests in a separate, limited process. Model output is never executed
in the steerwatch process.

Each run gets a fresh temporary directory (its working directory and HOME), a clean environment,
``python -I -S`` (no site-packages, no user environment), a wall-clock timeout after which its
whole process group is killed, CPU, memory, file-size and core limits (rlimits), and an audit hook
(``lab/_runner.py``) that refuses sockets, process creation (fork, exec, subprocess, os.system),
native code (ctypes, mmap) and writes outside the directory. Where the OS allows it the run also
gets its own empty network namespace (``unshare -n``); :func:`isolation` says what this machine
provides and every run record carries it.

This is a guard against accidents and careless model code, not a boundary against an adversary
that knows it is sandboxed: run untrusted, capable models' code in a container or VM as well.

Outcomes: ``pass`` (every test passed), ``fail`` (some test failed; each test's result says which
and why), ``error`` (the program does not load: syntax error, exception at import),
``timeout`` (killed at the wall-clock limit; tests that finished before keep their result),
``crash`` (the process died without finishing: ``os._exit``, a signal, the memory limit).
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import SteerwatchError

Status = Literal["pass", "fail", "error", "timeout", "crash"]
RUNNER = Path(__file__).with_name("_runner.py")


@dataclass(frozen=True)
class Limits:
    """Per-run limits: wall-clock seconds, CPU seconds, address space and largest file in MiB."""

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    file_mb: int = 16

    def __post_init__(self) -> None:
        if not self.timeout_s > 0 or self.cpu_s < 1 or self.memory_mb < 64 or self.file_mb < 1:
            raise SteerwatchError(f"sandbox limits out of range: {self}; need timeout_s > 0, cpu_s >= 1, "
                                  "memory_mb >= 64, file_mb >= 1")


@dataclass
class TestResult:
    test: int
    ok: bool
    error: str | None = None
    message: str | None = None
    got: str | None = None


@dataclass
class RunResult:
    """What running a program against its tests gave (see the module docstring for ``status``)."""

    status: Status
    tests: list[TestResult] = field(default_factory=list)
    detail: str = ""  # load error, crash exit code and stderr tail, or the timeout

    def ok(self, i: int) -> bool:
        """Whether test ``i`` ran and passed."""
        return any(t.test == i and t.ok for t in self.tests)

    def failing(self) -> list[TestResult]:
        return [t for t in self.tests if not t.ok]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> RunResult:
        return cls(status=row["status"], tests=[TestResult(**t) for t in row.get("tests", [])],
                   detail=row.get("detail", ""))


@functools.lru_cache(maxsize=1)
def isolation() -> dict[str, Any]:
    """What isolation this machine gives a run: the network namespace (``unshare -n``, as root;
    ``unshare -rn`` through a user namespace; or none, leaving the audit hook alone to refuse
    sockets), and the limits that always apply."""
    network = "audit hook only (no network namespace available)"
    prefix: list[str] = []
    exe = shutil.which("unshare")
    if exe and sys.platform.startswith("linux"):
        for flags, name in ((["-n"], "unshare -n"), (["-r", "-n"], "unshare -rn")):
            try:
                done = subprocess.run([exe, *flags, "true"], capture_output=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if done.returncode == 0:
                network, prefix = f"own network namespace ({name})", [exe, *flags]
                break
    return {"network": network, "prefix": prefix,
            "filesystem": "fresh temp dir; writes elsewhere refused by an audit hook",
            "processes": "fork/exec/subprocess refused; process group killed at the end",
            "limits": "rlimits: CPU, address space, file size, no core"}


def _parse(lines: list[str], n_tests: int) -> tuple[list[TestResult], str | None, bool, bool]:
    tests: list[TestResult] = []
    load_error, loaded, done = None, False, False
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a killed run
        if not isinstance(rec, dict):
            continue
        if "load_error" in rec:
            load_error = str(rec["load_error"])
        elif rec.get("loaded"):
            loaded = True
        elif rec.get("done"):
            done = True
        elif isinstance(rec.get("test"), int) and 0 <= rec["test"] < n_tests:
            tests.append(TestResult(test=rec["test"], ok=bool(rec.get("ok")), error=rec.get("error"),
                                    message=rec.get("message"), got=rec.get("got")))
    return tests, load_error, loaded, done


def run_tests(program: str, tests: Sequence[dict[str, str]], *, limits: Limits | None = None) -> RunResult:
    """Run ``program`` (Python source) in the sandbox, then each test: ``{"call": EXPR, "expected":
    EXPR}`` (the call's value must equal the expected value) or ``{"source": "assert ..."}``."""
    lim = limits or Limits()
    for t in tests:
        if not (("call" in t and "expected" in t) or "source" in t):
            raise SteerwatchError(f"a sandbox test needs 'call' and 'expected', or 'source'; got keys {sorted(t)}")
    iso = isolation()
    with tempfile.TemporaryDirectory(prefix="steerwatch-lab-") as tmp:
        work = Path(tmp) / "run"
        work.mkdir()
        (work / "solution.py").write_text(program, encoding="utf-8")
        (Path(tmp) / "tests.json").write_text(json.dumps(list(tests)), encoding="utf-8")
        out_path = Path(tmp) / "results.jsonl"
        cmd = [*iso["prefix"], sys.executable, "-I", "-S", str(RUNNER), str(work / "solution.py"),
               str(Path(tmp) / "tests.json"), str(out_path), str(lim.cpu_s), str(lim.memory_mb), str(lim.file_mb)]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        timed_out = False
        try:
            _, err = proc.communicate(timeout=lim.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            _, err = proc.communicate()
        finally:
            _kill_group(proc.pid)  # anything the program left behind in its session
        lines = out_path.read_text(encoding="utf-8", errors="replace").split("\n") if out_path.exists() else []
    results, load_error, loaded, done = _parse(lines, len(tests))
    stderr_tail = (err or b"").decode("utf-8", errors="replace").strip()[-300:]
    if timed_out:
        return RunResult("timeout", results, f"killed after {lim.timeout_s:g} s")
    if load_error is not None:
        return RunResult("error", [], load_error)
    if not done:
        code = proc.returncode
        why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        what = "while loading the program" if not loaded else f"after {len(results)} of {len(tests)} tests"
        tail = f": {stderr_tail}" if stderr_tail else ""
        return RunResult("crash", results, f"the process ended ({why}) {what}{tail}")
    status: Status = "pass" if len(results) == len(tests) and all(r.ok for r in results) else "fail"
    return RunResult(status, results)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_many(jobs: Sequence[tuple[str, Sequence[dict[str, str]]]], *, limits: Limits | None = None,
             workers: int | None = None, on_done: Callable[[], None] | None = None) -> list[RunResult]:
    """:func:`run_tests` for many (program, tests) pairs, ``workers`` sandboxes at a time (default:
    the CPU count), results in input order."""
    n = max(1, workers or os.cpu_count() or 1)

    def one(job: tuple[str, Sequence[dict[str, str]]]) -> RunResult:
        res = run_tests(job[0], job[1], limits=limits)
        if on_done is not None:
            on_done()
        return res

    if n == 1 or len(jobs) <= 1:
        return [one(j) for j in jobs]
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, jobs))
