"""The git state of a record when the checkout is a copy without git (a tree shipped to another machine)."""

from __future__ import annotations

import subprocess

import pytest

from peftrepro.runs import envinfo


@pytest.fixture
def no_git(monkeypatch):
    def fail(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", fail)
    envinfo.git_state.cache_clear()
    yield
    envinfo.git_state.cache_clear()


def test_without_git_the_commit_is_null(no_git, monkeypatch) -> None:
    monkeypatch.delenv(envinfo.GIT_COMMIT_ENV, raising=False)
    assert envinfo.git_state() == {"commit": None, "dirty": None}


def test_without_git_the_packing_machines_commit_is_recorded(no_git, monkeypatch) -> None:
    monkeypatch.setenv(envinfo.GIT_COMMIT_ENV, "abc123")
    monkeypatch.setenv(envinfo.GIT_DIRTY_ENV, "1")
    assert envinfo.git_state() == {"commit": "abc123", "dirty": True}
