"""`make install DESTDIR=<tmp>`: the layout, the installed unit checked by `systemd-analyze verify`, and
an operator's config kept on reinstall. Everything lands below a temporary root: the real /etc, /opt and
systemd are never touched (a `systemctl` first on PATH records any call, and none may come)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e  # a venv and a pip install: about half a minute

REPO = Path(__file__).resolve().parent.parent
VENV = "opt/kloros-orchestrator/venv"
SCRIPT = f"{VENV}/bin/kloros-orchestrator"
UNIT = "etc/systemd/system/kloros-orchestrator.service"
CONFIG = "etc/kloros-orchestrator/dream.yaml"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")  # the distribution's units (targets the unit needs)


@dataclass
class Installed:
    root: Path
    env: dict[str, str]
    systemctl_calls: Path
    output: str


def _make_install(root: Path, env: dict[str, str]) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        ["make", "--no-print-directory", "install", f"DESTDIR={root}", f"PYTHON={sys.executable}"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("install")
    root, fake_bin = base / "root", base / "bin"
    fake_bin.mkdir()
    calls = base / "systemctl-calls"
    systemctl = fake_bin / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    systemctl.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "DESTDIR")}
    env["PATH"] = f"{fake_bin}{os.pathsep}{env.get('PATH', '')}"
    yield Installed(root, env, calls, _make_install(root, env))


def _unit_settings(unit: Path) -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings[key.strip()] = value.strip()
    return settings


def test_layout(installed: Installed) -> None:
    root = installed.root
    script = root / SCRIPT
    assert os.access(script, os.X_OK)
    assert os.readlink(root / "usr/local/bin/kloros-orchestrator") == f"/{SCRIPT}"
    unit = _unit_settings(root / UNIT)
    assert unit["ExecStart"] == f"/{SCRIPT} run --config /{CONFIG}"
    assert unit["Type"] == "notify" and unit["WatchdogSec"] == "60s"
    assert unit["StateDirectory"] == unit["RuntimeDirectory"] == "kloros-orchestrator"
    assert stat.S_IMODE((root / UNIT).stat().st_mode) == 0o644
    assert stat.S_IMODE((root / CONFIG).stat().st_mode) == 0o644
    config = yaml.safe_load((root / CONFIG).read_text())  # follows the unit's directories
    assert config["state_dir"] == f"/var/lib/{unit['StateDirectory']}"
    assert config["socket"] == f"/run/{unit['RuntimeDirectory']}/kloros.sock"
    assert "systemctl enable --now kloros-orchestrator" in installed.output
    assert not installed.systemctl_calls.exists()  # DESTDIR: systemd left alone
    # The venv's console script runs (a staged venv runs from where it was made).
    done = subprocess.run(
        [str(script), "validate", "--config", str(root / CONFIG)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "ok (domains: cpu, memory, storage, os_scheduler" in done.stdout


def _verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", f"/{UNIT}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_systemd_analyze_verify_passes_on_the_installed_unit(installed: Installed) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    if not (SYSTEM_UNITS / "sysinit.target").is_file():
        pytest.skip(
            f"no distribution units in {SYSTEM_UNITS}: the unit's default dependencies cannot resolve"
        )
    # With --root, verify resolves ExecStart and every unit the service pulls in (sysinit.target,
    # basic.target, ...) below the root: the distribution's units go beside the installed one.
    root = installed.root
    units = root / "usr/lib/systemd/system"
    if not units.exists():
        shutil.copytree(SYSTEM_UNITS, units, symlinks=True)
    done = _verify(root)
    assert done.returncode == 0 and done.stdout == done.stderr == "", done.stdout + done.stderr
    # The check is real: without the console script the same command fails and names it.
    script = root / SCRIPT
    aside = script.with_name("moved-aside")
    script.rename(aside)
    try:
        missing = _verify(root)
    finally:
        aside.rename(script)
    assert missing.returncode != 0
    assert f"/{SCRIPT} is not executable" in missing.stderr


def test_reinstall_keeps_the_operators_config(installed: Installed) -> None:
    config = installed.root / CONFIG
    edited = config.read_text() + "# the operator's own edit\n"
    config.write_text(edited)
    output = _make_install(installed.root, installed.env)
    assert config.read_text() == edited
    assert "kept the existing /etc/kloros-orchestrator/dream.yaml" in output
    assert os.access(installed.root / SCRIPT, os.X_OK)
    assert not installed.systemctl_calls.exists()
