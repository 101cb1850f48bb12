"""Shared pytest configuration of the top-level ``tests/`` suite.

``scripts/test`` runs this suite with ``-p no:odoo`` (pytest-odoo would import ``odoo`` on
load) and with the environment written by ``scripts/setup`` (``ODOO``, ``DRIP_ODOO_CONF``,
``DRIP_REDIS_URL``, ``PG*``).

Markers (declared in pyproject.toml):

- ``odoo``: the test needs an Odoo 18 source tree. Tests under ``tests/integration/`` get it
  automatically. Without a tree they are skipped *with the reason*, and the run ends with a
  banner saying so - never silently.
- ``redis``: the test needs ``redis-server`` (or the Redis at ``DRIP_REDIS_URL``); skipped
  with the reason when neither is available.
- ``slow``: informational; slow tests still run in ``scripts/test`` (deselect them by hand
  with ``-m "not slow"``).
"""

import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
# Folders (directly under tests/) whose every test needs an Odoo tree.
ODOO_TEST_DIRS = {"integration"}

_skipped_for_odoo = []


def odoo_tree():
    """The Odoo 18 tree the harness found, or None."""
    root = os.environ.get("ODOO")
    if not root:
        return None
    release = Path(root, "odoo", "release.py")
    if (
        Path(root, "odoo-bin").is_file()
        and release.is_file()
        and "version_info = (18, 0," in release.read_text()
    ):
        return Path(root)
    return None


def odoo_missing_reason():
    return os.environ.get("DRIP_ODOO_MISSING_REASON") or (
        "ODOO is not set to an Odoo 18 tree (run through scripts/test, or set ODOO_SRC)"
    )


def redis_available():
    if shutil.which("redis-server"):
        return True
    url = urlparse(os.environ.get("DRIP_REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 6379), 1):
            return True
    except OSError:
        return False


def pytest_collection_modifyitems(config, items):
    has_odoo = odoo_tree() is not None
    has_redis = redis_available()
    for item in items:
        rel = Path(str(item.fspath)).resolve()
        try:
            top = rel.relative_to(REPO / "tests").parts[0]
        except (ValueError, IndexError):
            top = ""
        if top in ODOO_TEST_DIRS:
            item.add_marker(pytest.mark.odoo)
        if not has_odoo and item.get_closest_marker("odoo"):
            _skipped_for_odoo.append(item.nodeid)
            item.add_marker(pytest.mark.skip(reason=f"needs Odoo 18: {odoo_missing_reason()}"))
        elif not has_redis and item.get_closest_marker("redis"):
            item.add_marker(
                pytest.mark.skip(
                    reason="needs Redis: no redis-server and nothing at DRIP_REDIS_URL"
                )
            )


def pytest_terminal_summary(terminalreporter):
    if _skipped_for_odoo:
        terminalreporter.write_sep(
            "#",
            f"ODOO-LEVEL TESTS SKIPPED: {len(_skipped_for_odoo)} tests in tests/ need Odoo 18: "
            f"{odoo_missing_reason()}",
            yellow=True,
            bold=True,
        )
