"""The tiers of tests/tiers.py, on a small suite run inside this test: fixtures and module marks make tests slow,
and a test that is not slow fails when it starts a subprocess or Ray, even where the code under test catches the
failure; slow tests and quick programs (git) are let through."""

from __future__ import annotations

SUITE = '''
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def ray_session():  # named as a slow fixture; starts nothing here
    yield None


def test_fast():
    assert sum(range(4)) == 6


def test_starts_a_subprocess():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_catches_the_failure():
    try:
        subprocess.Popen([sys.executable, "-c", "pass"]).wait()
    except BaseException:
        pass


def test_starts_ray():
    import ray

    ray.init(num_cpus=1, include_dashboard=False)


def test_runs_git():
    subprocess.run(["git", "--version"], check=True, capture_output=True)


def test_slow_by_fixture(ray_session):
    subprocess.run([sys.executable, "-c", "pass"], check=True)


@pytest.mark.slow
def test_slow_by_mark():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
'''

SLOW_MODULE = '''
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_slow_by_module():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
'''


def _suite(pytester):
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n")
    pytester.makeconftest('pytest_plugins = ["tiers"]\n')
    pytester.makepyfile(test_suite=SUITE, test_slow_module=SLOW_MODULE)


def test_fixtures_and_module_marks_put_tests_in_the_slow_tier(pytester):
    _suite(pytester)
    fast = pytester.runpytest("-m", "not slow", "--collect-only", "-q")
    assert sorted(line.split("::")[1] for line in fast.outlines if "::" in line) == [
        "test_catches_the_failure", "test_fast", "test_runs_git", "test_starts_a_subprocess", "test_starts_ray"]
    slow = pytester.runpytest("-m", "slow", "--collect-only", "-q")
    assert sorted(line.split("::")[1] for line in slow.outlines if "::" in line) == [
        "test_slow_by_fixture", "test_slow_by_mark", "test_slow_by_module"]


def test_a_fast_test_that_starts_a_subprocess_or_ray_fails_and_says_how_to_fix_it(pytester):
    _suite(pytester)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, failed=3)
    fix = "mark it slow (@pytest.mark.slow, or use a fixture that is: tests/tiers.py, SLOW_FIXTURES)"
    result.stdout.fnmatch_lines_random([
        f"test_suite.py::test_starts_a_subprocess: this test starts a subprocess (* -c pass): {fix}",
        f"test_suite.py::test_catches_the_failure: this test starts a subprocess (* -c pass): {fix} "
        "(the code under test caught that failure)",
        f"test_suite.py::test_starts_ray: this test starts Ray (ray.init): {fix}",
    ])
    failed = {report.nodeid.split("::")[1] for report in result.reprec.getfailures()}
    assert failed == {"test_starts_a_subprocess", "test_catches_the_failure", "test_starts_ray"}
