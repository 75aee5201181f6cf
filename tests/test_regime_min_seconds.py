"""A regime's ``min_seconds``: shorter trial overrides are raised to it; a declaration above the regime's
own duration is a configuration problem; the embedded memory idle regime declares it."""

from __future__ import annotations

from pathlib import Path

import pytest

from kloros_orchestrator.config import ConfigError, load_config
from kloros_orchestrator.spica.domains.memory import SpicaMemory
from kloros_orchestrator.spica.knobs import KnobJournal


def test_the_embedded_memory_idle_regime_needs_five_seconds() -> None:
    loaded = load_config(None)
    assert loaded.regimes["memory"]["idle"].min_seconds == 5
    assert loaded.regimes["memory"]["normal"].min_seconds is None


def test_a_shorter_override_is_raised_to_min_seconds(tmp_path: Path) -> None:
    regimes = load_config(None).regimes["memory"]
    dom = SpicaMemory(sysfs_root=tmp_path, journal=KnobJournal(tmp_path / "j"), regimes=regimes,
                      scratch_dir=tmp_path / "s", cpus=2)  # fmt: skip
    dom.discover()  # no knob here: the workload still builds from the regimes
    assert dom.build_workload("idle", {}, duration_s=2.0).duration_s == 5.0
    assert dom.build_workload("idle", {}, duration_s=8.0).duration_s == 8.0
    assert dom.build_workload("normal", {}, duration_s=2.0).duration_s == 2.0
    assert dom.build_workload("idle", {}).duration_s == 10.0  # the regime's own duration


def test_min_seconds_above_the_duration_is_refused(tmp_path: Path) -> None:
    regimes = tmp_path / "regimes"
    regimes.mkdir()
    spec = "{duration: 3, min_seconds: 5, stressors: [{name: cpu, instances: 1}]}"
    good = "{duration: 3, stressors: [{name: cpu, instances: 1}]}"
    (regimes / "cpu.yaml").write_text(f"idle: {spec}\nnormal: {good}\nstress: {good}\nmixed: {good}\n")
    cfg = tmp_path / "dream.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nregimes_dir: {regimes}\ndream: {{domains: [cpu]}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert any("idle.min_seconds" in p and "at most the regime's duration" in p for p in e.value.problems)
