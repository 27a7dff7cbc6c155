"""The CI rule of the root conftest.py: under CI=true with ../shared/data beside the checkout, a test that
skips because the real data is missing fails; elsewhere it skips, and other skips stay skips."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

TESTS = '''
import pytest


def test_needs_real_data(data_root):
    assert data_root.is_dir()


def test_needs_a_browser():
    pytest.skip("headless Chromium not installed")
'''


def _run(pytester, monkeypatch, ci: str | None, with_shared: bool):
    checkout = pytester.mkdir("checkout")
    (checkout / "conftest.py").write_text(ROOT_CONFTEST.read_text())
    (checkout / "test_rule.py").write_text(TESTS)
    if with_shared:
        (pytester.path / "shared" / "data").mkdir(parents=True)
    monkeypatch.setenv("GALMORPH_DATA_ROOT", str(pytester.path / "no-such-data"))  # the real data is "missing"
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    return pytester.runpytest_subprocess(str(checkout), "-p", "no:cacheprovider", "-rfs")


def test_missing_real_data_fails_in_ci(pytester, monkeypatch):
    res = _run(pytester, monkeypatch, "true", with_shared=True)
    res.assert_outcomes(errors=1, skipped=1)  # the skip happens in the data_root fixture: a setup error
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    res.stdout.fnmatch_lines(["*test_needs_real_data*", "*real data not found*"])
    assert "skips for missing real data fails in CI" in res.stdout.str()


@pytest.mark.parametrize("ci, with_shared", [(None, True), ("true", False)])
def test_missing_real_data_skips_outside_ci_or_without_the_data_root(pytester, monkeypatch, ci, with_shared):
    res = _run(pytester, monkeypatch, ci, with_shared)
    res.assert_outcomes(skipped=2)
    assert res.ret == pytest.ExitCode.OK
    res.stdout.fnmatch_lines(["*real data not found*"])
