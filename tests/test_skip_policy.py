"""The skip policy of tests/conftest.py: a skip outside the allow-list fails the run, one inside it does not,
and an allow-list line without a reason is refused."""

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_it="""
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("no device here")
""")
    return pytester


def test_a_skip_outside_the_allow_list_fails_the_run(suite: pytest.Pytester):
    (suite.path / "allowed.txt").write_text("# nothing allowed\n")
    result = suite.runpytest("--allowed-skips", "allowed.txt", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*skips not in the allow-list*", "*test_it.py::test_skips: Skipped: no device here*"])


def test_a_skip_in_the_allow_list_passes(suite: pytest.Pytester):
    (suite.path / "allowed.txt").write_text("test_it.py::test_skips -- needs a device this host lacks\n")
    assert suite.runpytest("--allowed-skips", "allowed.txt", "-p", "no:cacheprovider").ret == pytest.ExitCode.OK


def test_an_entry_without_a_reason_is_refused(suite: pytest.Pytester):
    (suite.path / "allowed.txt").write_text("test_it.py::test_skips\n")
    result = suite.runpytest("--allowed-skips", "allowed.txt", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_missing_kernels_fail_at_start_up_when_required(suite: pytest.Pytester, monkeypatch):
    from corral.kernels import cpu_extension

    monkeypatch.setattr(cpu_extension, "build_problem", lambda: "C++ kernels are stale")
    result = suite.runpytest("--require-kernels", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--require-kernels: C++ kernels are stale*make install*"])
    assert suite.runpytest("-p", "no:cacheprovider").ret == pytest.ExitCode.OK  # by hand: the kernel tests skip
