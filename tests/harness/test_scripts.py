"""The developer/CI harness itself: .ci/run, scripts/setup, scripts/test.

These tests run the real scripts (no mocks). They use the virtualenv this pytest runs in
(``DRIP_VENV=sys.prefix``), so a temporary cache folder never triggers a venv build.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
# An Odoo "remote" that fails at once, whatever the network: the no-Odoo path must not hang.
NO_REMOTE = "file:///nonexistent/odoo.git"


def run(cmd, env_overrides=None, timeout=300):
    env = dict(os.environ)
    env.update(env_overrides or {})
    return subprocess.run(
        cmd,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def no_odoo_env(tmp_path):
    return {
        "ODOO_SRC": "/nonexistent",
        "DRIP_CACHE": str(tmp_path / "cache"),
        "DRIP_VENV": sys.prefix,
        "DRIP_ODOO_GIT_URL": NO_REMOTE,
        "DRIP_SKIP_APT": "1",
        "ODOO": "",
        "DRIP_ODOO_CONF": "",
    }


def test_ci_run_calls_scripts_test():
    text = (REPO / ".ci" / "run").read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    code = [
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    assert any(re.search(r"(^|\s)(exec\s+)?scripts/test(\s|$)", line) for line in code), code


@pytest.mark.parametrize("name", ["setup", "test", "run", "lint", "check-install"])
def test_scripts_are_strict_executable_bash(name):
    path = SCRIPTS / name
    assert os.access(path, os.X_OK), f"{path} is not executable"
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    result = run(["bash", "-n", str(path)])
    assert result.returncode == 0, result.stderr


def test_lib_is_valid_bash():
    result = run(["bash", "-n", str(SCRIPTS / "lib.sh")])
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_setup_second_run_changes_nothing():
    """Run for real, twice: whatever the first run did, the second reports no change."""
    first = run([str(SCRIPTS / "setup")], timeout=3600)
    assert first.returncode == 0, first.stdout + first.stderr
    second = run([str(SCRIPTS / "setup")], timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.strip().splitlines()[-1] == "SETUP-CHANGES: none", second.stdout
    assert "apt: installing" not in second.stdout
    assert "venv: installing" not in second.stdout


def test_setup_without_odoo_says_why_and_does_not_hang(tmp_path):
    result = run([str(SCRIPTS / "setup")], no_odoo_env(tmp_path), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "odoo: NOT FOUND" in result.stderr
    assert NO_REMOTE in result.stderr
    env_files = list((tmp_path / "cache" / "instances").glob("*/env.sh"))
    assert len(env_files) == 1
    env_text = env_files[0].read_text()
    assert "export ODOO=''" in env_text
    assert "DRIP_REDIS_URL='redis://127.0.0.1:" in env_text


@pytest.mark.slow
def test_test_command_without_odoo_skips_loudly_and_passes(tmp_path):
    """scripts/test with no Odoo tree: banner with the reason, exit 0, pytest-style total."""
    sample = tmp_path / "test_sample.py"
    sample.write_text("def test_one():\n    assert 1 + 1 == 2\n")
    env = no_odoo_env(tmp_path)
    env["DRIP_LINT"] = "0"
    result = run([str(SCRIPTS / "test"), str(sample)], env, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "ODOO-LEVEL TESTS SKIPPED: no Odoo 18.0 tree" in out
    last = result.stdout.strip().splitlines()[-1]
    assert re.match(r"^=+ 1 passed in \S+ \(all stages: PASS\) =+$", last), last


@pytest.mark.slow
def test_test_command_fails_when_a_test_fails(tmp_path):
    sample = tmp_path / "test_failing.py"
    sample.write_text("def test_one():\n    assert 1 + 1 == 3\n")
    env = no_odoo_env(tmp_path)
    env["DRIP_LINT"] = "0"
    result = run([str(SCRIPTS / "test"), str(sample)], env, timeout=300)
    assert result.returncode != 0
    assert re.search(r"1 failed in \S+ \(FAILED", result.stdout), result.stdout[-2000:]
