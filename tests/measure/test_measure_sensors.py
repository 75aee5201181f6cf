from __future__ import annotations

from pathlib import Path

import pytest

from kloros_orchestrator.measure.sensors import TrialSampler, discover_sensors, energy_delta_uj
from kloros_orchestrator.model import TEMP, WATTS


def _write(root: Path, rel: str, value: str | int) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")
    return path


def _rapl(root: Path, zone: str, energy: int, max_range: int = 262143328850, name: str = "package-0") -> Path:
    _write(root, f"sys/class/powercap/{zone}/max_energy_range_uj", max_range)
    _write(root, f"sys/class/powercap/{zone}/name", name)
    return _write(root, f"sys/class/powercap/{zone}/energy_uj", energy)


def test_nothing_present_is_absent_with_reasons(tmp_path: Path) -> None:
    sensors = discover_sensors(tmp_path)
    assert not sensors.temperature_available
    assert not sensors.power_available
    assert sensors.missing[TEMP] == f"no hwmon or thermal zone under {tmp_path}"
    assert sensors.missing[WATTS] == f"no RAPL energy counter under {tmp_path}"
    sampler = TrialSampler(sensors)
    assert sampler.start(0.0) == {}
    assert sampler.sample(1.0) == {}
    assert sampler.finish(2.0) == {}  # absent, never 0.0
    assert set(sampler.missing) == {TEMP, WATTS}


def test_hwmon_and_thermal_zone_discovered(tmp_path: Path) -> None:
    _write(tmp_path, "sys/class/hwmon/hwmon0/temp1_input", 45000)
    _write(tmp_path, "sys/class/hwmon/hwmon0/temp2_input", 47500)
    _write(tmp_path, "sys/class/hwmon/hwmon1/name", "nvme")  # not a temperature input
    _write(tmp_path, "sys/class/thermal/thermal_zone0/temp", 41000)
    sensors = discover_sensors(tmp_path)
    assert sensors.temperature_available
    assert len(sensors.temp_paths) == 3
    assert TEMP not in sensors.missing
    assert sensors.read_temperature() == 47.5


def test_unreadable_temperature_files_are_absent_not_a_crash(tmp_path: Path) -> None:
    # A directory where a file is expected and garbage content both simulate unreadable files (root
    # ignores chmod 000).
    (tmp_path / "sys/class/hwmon/hwmon0/temp1_input").mkdir(parents=True)
    _write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "garbage")
    sensors = discover_sensors(tmp_path)
    assert not sensors.temperature_available
    assert sensors.missing[TEMP].startswith("temperature sensors unreadable:")
    assert "IsADirectoryError" in sensors.missing[TEMP]
    assert "not an integer" in sensors.missing[TEMP]


def test_one_good_sensor_among_bad_ones_is_used(tmp_path: Path) -> None:
    (tmp_path / "sys/class/hwmon/hwmon0/temp1_input").mkdir(parents=True)
    _write(tmp_path, "sys/class/hwmon/hwmon0/temp2_input", 52000)
    _write(tmp_path, "sys/class/thermal/thermal_zone0/temp", -273000)  # broken probe, implausible
    sensors = discover_sensors(tmp_path)
    assert sensors.temperature_available
    assert sensors.read_temperature() == 52.0


def test_max_temperature_over_samples(tmp_path: Path) -> None:
    temp = _write(tmp_path, "sys/class/hwmon/hwmon0/temp1_input", 40000)
    sampler = TrialSampler(discover_sensors(tmp_path))
    assert sampler.start(100.0) == {TEMP: 40.0}
    temp.write_text("71000\n")
    assert sampler.sample(101.0) == {TEMP: 71.0}
    temp.write_text("55000\n")
    assert sampler.sample(102.0) == {TEMP: 55.0}
    temp.write_text("50000\n")
    assert sampler.finish(103.0) == {TEMP: 71.0}


def test_power_from_one_zone_and_subzones_ignored(tmp_path: Path) -> None:
    energy = _rapl(tmp_path, "intel-rapl:0", 1_000_000)
    sub = _rapl(tmp_path, "intel-rapl:0:0", 5_000_000, name="core")
    sensors = discover_sensors(tmp_path)
    assert sensors.power_available
    assert [z.name for z in sensors.rapl_zones] == ["intel-rapl:0"]
    sampler = TrialSampler(sensors)
    sampler.start(10.0)
    energy.write_text("21000000\n")  # +20 J in 1 s
    sub.write_text("99000000\n")
    assert sampler.sample(11.0) == {WATTS: pytest.approx(20.0)}
    energy.write_text("31000000\n")  # +10 J in 2 s
    assert sampler.sample(13.0) == {WATTS: pytest.approx(5.0)}
    assert sampler.finish(14.0) == {WATTS: pytest.approx(30.0 / 4.0)}


def test_multiple_package_zones_are_summed_and_psys_excluded(tmp_path: Path) -> None:
    pkg0 = _rapl(tmp_path, "intel-rapl:0", 0)
    pkg1 = _rapl(tmp_path, "intel-rapl:1", 500, name="package-1")
    psys = _rapl(tmp_path, "intel-rapl:2", 0, name="psys")
    sensors = discover_sensors(tmp_path)
    assert [z.name for z in sensors.rapl_zones] == ["intel-rapl:0", "intel-rapl:1"]
    sampler = TrialSampler(sensors)
    sampler.start(0.0)
    pkg0.write_text("30000000\n")
    pkg1.write_text("10000500\n")
    psys.write_text("900000000\n")
    assert sampler.finish(2.0) == {WATTS: pytest.approx(20.0)}


def test_wraparound(tmp_path: Path) -> None:
    assert energy_delta_uj(100, 300, 1000) == 200
    assert energy_delta_uj(900, 50, 1000) == 150
    energy = _rapl(tmp_path, "intel-rapl:0", 999_000_000, max_range=1_000_000_000)
    sampler = TrialSampler(discover_sensors(tmp_path))
    sampler.start(0.0)
    energy.write_text("4000000\n")  # wrapped: 1 J to the top + 4 J after
    assert sampler.sample(1.0) == {WATTS: pytest.approx(5.0)}
    energy.write_text("999000000\n")  # 995 J in a second: a second wrap is impossible, no wrap here
    energy.write_text("8000000\n")
    assert sampler.finish(2.0) == {WATTS: pytest.approx((5.0 + 4.0) / 2.0)}


def test_unreadable_rapl_at_discovery(tmp_path: Path) -> None:
    _write(tmp_path, "sys/class/powercap/intel-rapl:0/max_energy_range_uj", 1000)
    (tmp_path / "sys/class/powercap/intel-rapl:0/energy_uj").mkdir(parents=True)
    sensors = discover_sensors(tmp_path)
    assert not sensors.power_available
    assert sensors.missing[WATTS] == "RAPL intel-rapl:0 energy_uj unreadable: IsADirectoryError"


def test_one_unreadable_package_makes_power_absent(tmp_path: Path) -> None:
    _rapl(tmp_path, "intel-rapl:0", 0)
    _rapl(tmp_path, "intel-rapl:1", 0)
    (tmp_path / "sys/class/powercap/intel-rapl:1/max_energy_range_uj").write_text("lots\n")
    sensors = discover_sensors(tmp_path)
    assert not sensors.power_available  # half the packages would under-report
    assert "intel-rapl:1 max_energy_range_uj unreadable" in sensors.missing[WATTS]


def test_zone_unreadable_mid_trial_makes_watts_absent(tmp_path: Path) -> None:
    energy = _rapl(tmp_path, "intel-rapl:0", 0)
    sampler = TrialSampler(discover_sensors(tmp_path))
    sampler.start(0.0)
    energy.write_text("1000000\n")
    assert sampler.sample(1.0) == {WATTS: pytest.approx(1.0)}
    energy.write_text("not a number\n")
    assert sampler.sample(2.0) == {}
    energy.write_text("3000000\n")  # readable again: the trial's total is already broken
    assert sampler.sample(3.0) == {}
    assert sampler.finish(4.0) == {}
    assert "unreadable during the trial" in sampler.missing[WATTS]


def test_zero_interval_gives_no_instantaneous_watts(tmp_path: Path) -> None:
    _rapl(tmp_path, "intel-rapl:0", 0)
    sampler = TrialSampler(discover_sensors(tmp_path))
    sampler.start(5.0)
    assert sampler.sample(5.0) == {}
    assert sampler.finish(5.0) == {}
    assert sampler.missing[WATTS] == "trial too short to measure power"


def test_sampler_call_order_is_enforced(tmp_path: Path) -> None:
    sampler = TrialSampler(discover_sensors(tmp_path))
    with pytest.raises(RuntimeError):
        sampler.sample(0.0)
    sampler.start(0.0)
    with pytest.raises(RuntimeError):
        sampler.start(1.0)
    sampler.finish(1.0)
    with pytest.raises(RuntimeError):
        sampler.sample(2.0)
