"""The bad-input catalogue: one case per rejected input, each required to fail early with a clear error.

A chapter's ``tests/<chapter>/test_<chapter>_bad_inputs.py`` lists ``CASES`` (and, for public names that take no input
worth rejecting, ``EXEMPT`` with the reason); ``tests/tooling/test_bad_input_coverage.py`` requires every public
entry point of every chapter to be covered by one or the other. A case passes only when

* the call raises the expected exception type,
* the message matches ``match`` (write it to require both the problem and the fix), and
* the exception is raised by minillm's own code, not deep inside a library (a bare ``IndexError`` from torch
  fails the case even when its type is right).
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "minillm"


@dataclass(frozen=True)
class BadInput:
    entry: str                     # the public name this case exercises, e.g. "minillm.gpt.generate"
    what: str                      # the bad input, in words
    call: Callable[[], object]     # performs the bad call
    error: type[BaseException]     # the exception type a reader gets
    match: str                     # regex the message must match: the problem and the fix

    @property
    def id(self) -> str:
        return f"{self.entry.split('.')[-1]}: {self.what}"


def check_case(case: BadInput) -> None:
    """Run one case; fail with a description of what the reader would have seen instead."""
    try:
        case.call()
    except BaseException as err:  # noqa: BLE001 - we inspect whatever the reader would get
        if not isinstance(err, case.error):
            pytest.fail(f"{case.id}: expected {case.error.__name__}, got {type(err).__name__}: {err}")
        if not re.search(case.match, str(err), flags=re.S):
            pytest.fail(f"{case.id}: the message does not match {case.match!r}:\n  {err}")
        frames = traceback.extract_tb(err.__traceback__)
        raiser = Path(frames[-1].filename).resolve() if frames else None
        if raiser is None or PACKAGE not in raiser.parents:
            where = f"{raiser}:{frames[-1].lineno}" if frames else "?"
            pytest.fail(f"{case.id}: raised inside a library ({where}), not by minillm's own check: {err}")
        return
    pytest.fail(f"{case.id}: no error was raised; the bad input was accepted silently")


def cases_param(cases: list[BadInput]):
    return pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])
