"""The Makefile checks PROFILE and SEEDS before anything runs (one line, exit 2, nothing started), and each
table's target, as the REPORT names it, runs that table's sweep."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from peftrepro.report.specs import TABLES

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
# Under `make test` the child make would inherit MAKELEVEL and print "Entering directory" lines.
ENV = {k: v for k, v in os.environ.items() if k not in {"MAKELEVEL", "MAKEFLAGS", "MFLAGS"}}


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("variables, message", [
    (["PROFILE=mimi"], "PROFILE=mimi is not a profile; choose one of: mini paper smoke"),
    (["PROFILE=smoke", "SEEDS=abc"], "SEEDS=abc must be comma-separated integers >= 0"),
    (["PROFILE=smoke", "SEEDS=0,,1"], "SEEDS=0,,1 must be comma-separated integers >= 0"),
])
def test_a_bad_profile_or_seed_list_stops_make_with_one_line(variables, message) -> None:
    done = make("-n", "table-rank", *variables)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr


def test_help_needs_no_valid_profile() -> None:
    done = make("help", "PROFILE=mimi")
    assert done.returncode == 0 and "table-rank" in done.stdout


@pytest.mark.parametrize("name", sorted(TABLES))
def test_each_table_names_the_make_target_that_sweeps_it(name) -> None:
    """The REPORT tells users `make <spec.make_target>`: that target must run the table's own sweep."""
    done = make("-n", TABLES[name].make_target, "PROFILE=smoke")
    assert done.returncode == 0, done.stderr
    assert f"-m peftrepro.runs -m experiment={name} " in done.stdout
