"""tools/screenshots: runs against a throw-away copy of the demo database and writes
non-empty 1400x900 PNGs (Odoo-free itself: it only drives the script as a subprocess)."""

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "screenshots"
NAMES = [
    "screenshot_journey_diagram.png",
    "screenshot_template_preview.png",
    "screenshot_customer_timeline.png",
    "screenshot_report_pivot.png",
    "screenshot_report_graph.png",
    "screenshot_settings.png",
]


def test_script_is_executable_python():
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3\n")


def _psql(*args, **kwargs):
    return subprocess.run(["psql", "-X", "-At", "-d", "postgres", *args],
                          capture_output=True, text=True, timeout=kwargs.get("timeout", 600))


@pytest.mark.slow
@pytest.mark.odoo
def test_screenshots_of_a_demo_copy(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    odoo = os.environ.get("ODOO") or str(Path.home() / ".cache/drip_marketing/odoo-18.0")
    if not (Path(odoo) / "odoo-bin").exists():
        pytest.skip(f"no Odoo 18 tree at {odoo}")
    if not any(Path(p).exists() for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser")):
        pytest.skip("no Chromium")
    demo = os.environ.get("DRIP_SCREENSHOT_DB") or os.environ.get("DRIP_DB", "drip_demo")
    if _psql("-c", f"SELECT 1 FROM pg_database WHERE datname = '{demo}'").stdout.strip() != "1":
        pytest.skip(f"no demo database {demo} (scripts/run creates it)")
    db_login = []
    if os.environ.get("DRIP_SCREENSHOT_DB_USER"):
        db_login = ["--db-user", os.environ["DRIP_SCREENSHOT_DB_USER"],
                    "--db-password", os.environ.get("DRIP_SCREENSHOT_DB_PASSWORD", "")]
    copy = f"drip_shots_{uuid.uuid4().hex[:8]}"
    created = _psql("-c", f'CREATE DATABASE "{copy}" TEMPLATE "{demo}"')
    if created.returncode:
        pytest.skip(f"cannot copy {demo}: {created.stderr.strip()}")
    # The copy needs its own filestore (asset bundles, images live there).
    filestore = None
    conf = os.environ.get("DRIP_ODOO_CONF")
    if conf and Path(conf).exists():
        import configparser

        parser = configparser.ConfigParser()
        parser.read(conf)
        data_dir = parser.get("options", "data_dir", fallback="")
        if data_dir and (Path(data_dir) / "filestore" / demo).is_dir():
            filestore = Path(data_dir) / "filestore" / copy
            shutil.copytree(Path(data_dir) / "filestore" / demo, filestore)
    try:
        if conf and Path(conf).exists():
            # The demo database may predate this checkout: bring the copy up to its code.
            upgraded = subprocess.run(
                [sys.executable, str(Path(odoo) / "odoo-bin"), "-c", conf, "-d", copy,
                 "-u", "drip_marketing", "--stop-after-init", "--no-http"],
                capture_output=True, text=True, timeout=1200, cwd=REPO)
            assert upgraded.returncode == 0, upgraded.stdout[-3000:] + upgraded.stderr[-3000:]
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--db", copy, "--out", str(tmp_path), *db_login],
            capture_output=True, text=True, timeout=900, cwd=REPO)
        assert result.returncode == 0, result.stdout + result.stderr
        for name in NAMES:
            path = tmp_path / name
            assert path.exists() and path.stat().st_size > 10_000, name
            assert path.stat().st_size < 500_000, name
            with Image.open(path) as image:
                assert image.format == "PNG"
                assert image.size == (1400, 900), name
                # Not a blank page: a real screen has many colours.
                assert len(image.convert("RGB").getcolors(maxcolors=1_000_000) or []) > 50
    finally:
        _psql("-c", f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')
        if filestore:
            shutil.rmtree(filestore, ignore_errors=True)
