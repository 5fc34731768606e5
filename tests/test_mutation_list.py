"""The mutation check's list stays true between its runs: every anchor is in its file exactly
once, every mutant changes it, and the tests named to kill it exist (tests/mutation.py)."""

from pathlib import Path

import pytest

import mutation

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("mutant", mutation.MUTANTS, ids=lambda m: m.name)
def test_mutant_applies_and_names_existing_tests(mutant):
    text = (ROOT / mutant.path).read_text()
    assert mutation.apply(text, mutant) != text
    assert mutant.tests and all((ROOT / t).is_file() for t in mutant.tests)


def test_names_are_unique():
    names = [m.name for m in mutation.MUTANTS]
    assert len(names) == len(set(names))


def test_a_moved_anchor_fails_loudly():
    mutant = mutation.MUTANTS[0]
    with pytest.raises(SystemExit, match="anchor not found"):
        mutation.apply("nothing here", mutant)
