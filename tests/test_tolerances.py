"""The suite's floating-point comparisons name their tolerance (tests/tolerances.py says why each
size is what it is); a bare ``pytest.approx``/``allclose``/``assert_close`` with an unexplained
tolerance is refused here."""
from __future__ import annotations

import re
from pathlib import Path

BARE = re.compile(r"pytest\.approx\(|torch\.allclose\(|torch\.testing\.assert_close\(|np\.allclose\(|"
                  r"math\.isclose\(|np\.testing\.assert_allclose\(")


def test_every_float_comparison_names_its_tolerance():
    here = Path(__file__).parent
    offenders = []
    for path in sorted(here.glob("*.py")):
        if path.name in ("tolerances.py", Path(__file__).name):
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
            if BARE.search(line):
                offenders.append(f"{path.name}:{i}: {line.strip()}")
    assert offenders == [], "use a tolerance from tests/tolerances.py:\n" + "\n".join(offenders)
