"""docs/promises.md names the test behind each promise: every test it names exists."""
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_every_test_named_in_the_promises_exists():
    promises = (ROOT / "docs" / "promises.md").read_text()
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", promises)
    assert len(named) > 40, f"only {len(named)} test references found: has the format changed?"
    missing = [f"{file}::{test}" for file, test in named
               if not re.search(rf"^def {test}\(", (ROOT / "tests" / file).read_text(), re.MULTILINE)]
    assert not missing, f"docs/promises.md names tests that do not exist: {missing}"
