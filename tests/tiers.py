"""The fast and the slow tier of the suite: which tests are ``slow``, and a guard that keeps the fast tier
(``pytest -m "not slow"``) free of Ray and of subprocesses.

A test is slow when it starts Ray, a Ray cluster, a subprocess (a driver script, torchrun, an MLflow server) or a
long training run. It is marked so without decorating it where a fixture or its module says so:

* a test that requests a fixture of :data:`SLOW_FIXTURES` (say ``ray_session``) is marked ``slow`` at collection;
* a module whose every test is end to end sets ``pytestmark = pytest.mark.slow``;
* any other slow test carries ``@pytest.mark.slow``.

The guard: while a test that is not marked ``slow`` runs (its fixtures' set-up and tear-down included), starting a
subprocess (``subprocess.Popen``, so ``subprocess.run``, asyncio's subprocesses and Ray's own daemons too) or
calling ``ray.init`` fails the test and names the fix. Quick programs (:data:`QUICK_PROGRAMS`: ``git``, which the
provenance code and MLflow call) are let through. A failure that the code under test catches still fails the test
at the end of its phase.

tests/conftest.py loads this module as a plugin; tests/test_tiers.py checks it.
"""

from __future__ import annotations

import functools
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

SLOW_FIXTURES: dict[str, str] = {
    "ray_session": "starts a local Ray",
    "loopback_cluster": "starts a Ray cluster of `ray start` processes",
}
"""Fixture name -> what it starts; a test that requests one of them is slow."""

QUICK_PROGRAMS = frozenset({"git"})
"""Programs that a fast test may run: they return in milliseconds and leave nothing running."""

HOW_TO_FIX = "mark it slow (@pytest.mark.slow, or use a fixture that is: tests/tiers.py, SLOW_FIXTURES)"


@dataclass
class _Guard:
    """The test being guarded (its node id; ``None``: nothing is guarded) and what it tried to start."""

    test: str | None = None
    violations: list[str] = field(default_factory=list)


_guard = _Guard()
_lock = threading.Lock()
_original_popen_init = subprocess.Popen.__init__


def _program(args) -> str:
    first = args if isinstance(args, (str, bytes, os.PathLike)) else next(iter(args), "")
    first = os.fsdecode(first)
    return os.path.basename(first.split()[0] if first.strip() else first)


def refuse(what: str) -> None:
    """Fail the guarded test, if any, for starting ``what``; records it so a caught failure still counts."""
    with _lock:
        test = _guard.test
        if test is None:
            return
        message = f"{test}: this test {what}: {HOW_TO_FIX}"
        _guard.violations.append(message)
    pytest.fail(message, pytrace=False)


def _guarded_popen_init(self, args, *more, **kwargs):
    if _guard.test is not None and _program(args) not in QUICK_PROGRAMS:
        shown = args if isinstance(args, (str, bytes)) else " ".join(map(os.fsdecode, args))
        refuse(f"starts a subprocess ({str(shown)[:200]})")
    return _original_popen_init(self, args, *more, **kwargs)


def _install() -> None:
    """Put the guard in front of ``subprocess.Popen`` and ``ray.init`` (once per process)."""
    if subprocess.Popen.__init__ is not _guarded_popen_init:
        subprocess.Popen.__init__ = _guarded_popen_init
    try:
        import ray
    except ImportError:
        return
    if not getattr(ray.init, "_tamt_guarded", False):
        original = ray.init

        @functools.wraps(original)
        def init(*args, **kwargs):
            refuse("starts Ray (ray.init)")
            return original(*args, **kwargs)

        init._tamt_guarded = True
        ray.init = init


def is_slow(item: pytest.Item) -> bool:
    return item.get_closest_marker("slow") is not None


def pytest_configure(config: pytest.Config) -> None:
    _install()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(name in SLOW_FIXTURES for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Guard the test's set-up, call and tear-down unless it is slow; restore the previous state after it (a test
    run inside a test, by ``pytester``, guards only itself)."""
    with _lock:
        saved = _guard.test, _guard.violations
        _guard.test, _guard.violations = (None if is_slow(item) else item.nodeid), []
    try:
        return (yield)
    finally:
        with _lock:
            _guard.test, _guard.violations = saved


def _fail_if_caught() -> Iterator[None]:
    before = len(_guard.violations)
    result = yield  # a phase that raised (the guard's own failure included) is reported as it is
    if len(_guard.violations) > before:
        pytest.fail(_guard.violations[before] + " (the code under test caught that failure)", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    return (yield from _fail_if_caught())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    return (yield from _fail_if_caught())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    return (yield from _fail_if_caught())
