"""A student whose solution is wrong in a way the test chooses per run, as a flaky one would be by chance.

Each run waits (with a deadline) for a `verdict` file in its own work dir (the sandbox's `/work`), then "add" or
"mul" makes that function wrong and "none" leaves both right. Scripted, so every run of a suite sees the same
flips: a coin toss would miss now and then, and a test that depends on chance proves nothing.

A test tells the engines' runs apart by giving each engine its own `SANDBOX_ROOT` (`slow_student.sandbox_root`),
and answers the runs of each root in the order they start waiting (`Script`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.slow_student import waiting_markers

SCRIPTED_CALC = """import pathlib
import time

_VERDICT = []


def _wrong(name):
    if not _VERDICT:
        here = pathlib.Path.cwd()
        (here / "waiting").touch()
        deadline = time.monotonic() + 300
        while not (here / "verdict").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for the test's verdict file, with a deadline
        _VERDICT.append((here / "verdict").read_text() if (here / "verdict").exists() else "none")
    return 1 if _VERDICT[0] == name else 0


def add(a, b):
    return a + b + _wrong("add")


def mul(a, b):
    return a * b + _wrong("mul")


def mean(values):
    return sum(values) / len(values)
"""


def give_verdict(work: Path, verdict: str) -> None:
    """Put `verdict` beside a waiting run, whole or not at all (the run never reads half a word)."""
    staged = work / ".verdict"
    staged.write_text(verdict)
    staged.replace(work / "verdict")


@dataclass
class Script:
    """The verdicts still to give, per sandbox root, in the order that root's runs start waiting.

    `answer()` gives each run now waiting under a root the next verdict of that root and says whether every
    verdict was given; a run already answered, or a slow student of another test (released), is left alone."""

    verdicts: dict[Path, list[str]]
    given: set[Path] = field(default_factory=set)

    def add(self, root: Path, verdicts: Iterable[str]) -> None:
        self.verdicts.setdefault(root, []).extend(verdicts)

    def answer(self) -> bool:
        for root, verdicts in self.verdicts.items():
            for marker in waiting_markers(root):
                work = marker.parent
                if work in self.given or (work / "release").exists() or not verdicts:
                    continue
                give_verdict(work, verdicts.pop(0))
                self.given.add(work)
        return not any(self.verdicts.values())

    def waiting(self) -> int:
        """How many runs wait for a verdict that was not given yet (over every root)."""
        return sum(
            1
            for root in self.verdicts
            for marker in waiting_markers(root)
            if marker.parent not in self.given and not (marker.parent / "release").exists()
        )
