"""Fail loudly when requirements/lock.txt no longer describes what pyproject.toml asks for.

Run in CI after ``pip install -c requirements/lock.txt ...`` (see .ci/run). Three checks:

1. every requirement in pyproject.toml (dependencies and every extra) names a package the lock
   pins, at a version the requirement allows;
2. every distribution installed in the environment, except steerwatch itself, the installer's own
   tools and torch, is pinned in the lock at exactly the installed version (a new dependency that
   the lock does not know would otherwise be installed at whatever version is newest that day);
3. the installed torch is the release in requirements/torch.txt.

Exit status 1 with one line per problem and the command that fixes it (``scripts/lock.sh``).
"""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
# the installer's own tools: present in every venv, not steerwatch's dependencies
TOOLS = {"pip", "setuptools", "wheel", "steerwatch"}


def read_pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").split("\n"):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        if m is None:
            raise SystemExit(f"{path.name}: cannot read line {line!r}; expected NAME==VERSION")
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def main() -> int:
    lock_path = ROOT / "requirements" / "lock.txt"
    pins = read_pins(lock_path)
    torch_pin = read_pins(ROOT / "requirements" / "torch.txt")["torch"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        reqs += [Requirement(r) for r in extra]
    problems: list[str] = []
    for req in reqs:
        name = canonicalize_name(req.name)
        if name == "torch":
            if not req.specifier.contains(torch_pin, prereleases=True):
                problems.append(f"pyproject.toml asks for {req} but requirements/torch.txt pins {torch_pin}")
        elif name == "steerwatch":
            continue  # an extra that names another extra
        elif name not in pins:
            problems.append(f"pyproject.toml asks for {req} but the lock does not pin {req.name}")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"pyproject.toml asks for {req} but the lock pins {req.name}=={pins[name]}")
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in TOOLS:
            continue
        if name == "torch":
            if Version(dist.version).public != Version(torch_pin).public:
                problems.append(f"torch {dist.version} is installed but requirements/torch.txt pins {torch_pin}")
        elif name not in pins:
            problems.append(f"{dist.metadata['Name']} {dist.version} is installed but the lock does not pin it")
        elif Version(dist.version) != Version(pins[name]):
            problems.append(f"{dist.metadata['Name']} {dist.version} is installed but the lock pins {pins[name]}")
    if problems:
        print(f"{lock_path.relative_to(ROOT)} is stale:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        print("refresh it with `scripts/lock.sh` (needs uv), run the suite, and commit the new lock",
              file=sys.stderr)
        return 1
    print(f"lock ok: {len(pins)} pinned packages match pyproject.toml and the environment")
    return 0


if __name__ == "__main__":
    sys.exit(main())
