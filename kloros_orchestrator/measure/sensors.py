"""Temperature and package power from sysfs, read under a configurable ``sysfs_root``.

* temperature: ``sys/class/hwmon/hwmon*/temp*_input`` and ``sys/class/thermal/thermal_zone*/temp``
  (millidegrees C); the KPI is the maximum over every sensor and every sample of a trial.
* power: RAPL ``sys/class/powercap/intel-rapl:N/energy_uj`` of the top-level zones (not the
  ``intel-rapl:N:M`` subzones, which are already inside their package; not ``psys``, which
  contains the packages), with ``max_energy_range_uj`` for counter wraparound.

A sensor that is absent or unreadable makes its KPI *absent*, with the reason in ``missing``; it is
never a crash and never a made-up number. ``TrialSampler`` is synchronous and takes the time as an
argument: the async caller owns the clock and calls ``sample`` at least once per second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from loguru import logger

from kloros_orchestrator.model import TEMP, WATTS

_RAPL_TOP_ZONE: Final = re.compile(r"^intel-rapl:\d+$")
# Readings outside this range are broken sensors (unplugged probes report -273 or 0x7fff...),
# not temperatures; they are ignored rather than allowed to trip a cap.
_PLAUSIBLE_C: Final = (-50.0, 200.0)


class SensorReadError(Exception):
    """A sensor file could not be read as an integer; ``reason`` is a short human explanation."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def _read_int(path: Path) -> int:
    try:
        text = path.read_text(encoding="ascii", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise SensorReadError(path, type(exc).__name__) from exc
    try:
        return int(text.strip())
    except ValueError as exc:
        raise SensorReadError(path, f"not an integer: {text.strip()[:40]!r}") from exc


@dataclass(frozen=True)
class RaplZone:
    """One top-level RAPL package zone."""

    name: str  # directory name, e.g. "intel-rapl:0"
    energy_path: Path
    max_range_uj: int


class Sensors:
    """What this host can measure; build with ``discover_sensors``."""

    def __init__(
        self,
        root: Path,
        temp_paths: tuple[Path, ...],
        rapl_zones: tuple[RaplZone, ...],
        missing: dict[str, str],
    ) -> None:
        self.root = root
        self.temp_paths = temp_paths
        self.rapl_zones = rapl_zones
        self.missing = dict(missing)

    @property
    def temperature_available(self) -> bool:
        return bool(self.temp_paths)

    @property
    def power_available(self) -> bool:
        return bool(self.rapl_zones)

    def read_temperature(self) -> float | None:
        """Current maximum over all temperature sensors in °C; None when none could be read."""
        values: list[float] = []
        for path in self.temp_paths:
            try:
                celsius = _read_int(path) / 1000.0
            except SensorReadError:
                continue
            if _PLAUSIBLE_C[0] < celsius < _PLAUSIBLE_C[1]:
                values.append(celsius)
        return max(values) if values else None

    def read_energy(self) -> dict[str, int]:
        """Current ``energy_uj`` per zone; raises ``SensorReadError`` if any zone cannot be read."""
        return {zone.name: _read_int(zone.energy_path) for zone in self.rapl_zones}


def _discover_temperatures(root: Path) -> tuple[tuple[Path, ...], str | None]:
    candidates = sorted(root.glob("sys/class/hwmon/hwmon*/temp*_input")) + sorted(
        root.glob("sys/class/thermal/thermal_zone*/temp")
    )
    if not candidates:
        return (), f"no hwmon or thermal zone under {root}"
    usable: list[Path] = []
    problems: list[str] = []
    for path in candidates:
        try:
            _read_int(path)
        except SensorReadError as exc:
            problems.append(f"{path.relative_to(root)}: {exc.reason}")
            continue
        usable.append(path)
    if usable:
        return tuple(usable), None
    return (), "temperature sensors unreadable: " + "; ".join(problems)


def _discover_rapl(root: Path) -> tuple[tuple[RaplZone, ...], str | None]:
    dirs = sorted(p for p in root.glob("sys/class/powercap/intel-rapl:*") if _RAPL_TOP_ZONE.match(p.name))
    zones: list[RaplZone] = []
    problems: list[str] = []
    for zone_dir in dirs:
        name_file = zone_dir / "name"
        try:
            label = name_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            label = ""
        if label == "psys":
            # The platform domain already contains the packages: adding it would double-count.
            continue
        try:
            _read_int(zone_dir / "energy_uj")
        except SensorReadError as exc:
            problems.append(f"RAPL {zone_dir.name} energy_uj unreadable: {exc.reason}")
            continue
        try:
            max_range = _read_int(zone_dir / "max_energy_range_uj")
        except SensorReadError as exc:
            problems.append(f"RAPL {zone_dir.name} max_energy_range_uj unreadable: {exc.reason}")
            continue
        if max_range <= 0:
            problems.append(f"RAPL {zone_dir.name} max_energy_range_uj is {max_range}")
            continue
        zones.append(RaplZone(zone_dir.name, zone_dir / "energy_uj", max_range))
    if problems:
        # Power is the sum over packages; missing one package would under-report, so none is used.
        return (), "; ".join(problems)
    if not zones:
        return (), f"no RAPL energy counter under {root}"
    return tuple(zones), None


def discover_sensors(sysfs_root: Path) -> Sensors:
    """Find the temperature and power sensors readable under ``sysfs_root`` ("/" in production)."""
    root = Path(sysfs_root)
    temp_paths, temp_missing = _discover_temperatures(root)
    zones, power_missing = _discover_rapl(root)
    missing: dict[str, str] = {}
    if temp_missing is not None:
        missing[TEMP] = temp_missing
    if power_missing is not None:
        missing[WATTS] = power_missing
    logger.info(
        "sensors under {}: {} temperature inputs, {} RAPL zones; missing: {}",
        root,
        len(temp_paths),
        len(zones),
        "; ".join(f"{k} ({why})" for k, why in missing.items()) or "none",
    )
    return Sensors(root, temp_paths, zones, missing)


def energy_delta_uj(start: int, end: int, max_range_uj: int) -> int:
    """Energy consumed between two readings of one counter, allowing for one wraparound."""
    if end >= start:
        return end - start
    return (max_range_uj - start) + end


class TrialSampler:
    """Samples one trial's sensors: ``start(now)``, ``sample(now)`` at >= 1 Hz, ``finish(now)``.

    Watts over the trial are the per-interval energy deltas summed (each interval may wrap at most
    once, which holds at >= 1 Hz for any real package) divided by the elapsed time.
    """

    def __init__(self, sensors: Sensors) -> None:
        self.sensors = sensors
        self.missing: dict[str, str] = dict(sensors.missing)
        self._start: float | None = None
        self._last_time = 0.0
        self._last_energy: dict[str, int] | None = None
        self._energy_uj = 0
        self._power_ok = sensors.power_available
        self._max_temp: float | None = None
        self._finished = False

    def _read_temperature(self) -> float | None:
        if not self.sensors.temperature_available:
            return None
        celsius = self.sensors.read_temperature()
        if celsius is not None and (self._max_temp is None or celsius > self._max_temp):
            self._max_temp = celsius
        return celsius

    def _lose_power(self, reason: str) -> None:
        self._power_ok = False
        self._last_energy = None
        self.missing[WATTS] = reason
        logger.warning("watts absent for this trial: {}", reason)

    def _read_energy_delta(self) -> int | None:
        """Energy since the previous reading summed over zones; None when power is not available."""
        if not self._power_ok or self._last_energy is None:
            return None
        try:
            energy = self.sensors.read_energy()
        except SensorReadError as exc:
            self._lose_power(f"RAPL energy_uj unreadable during the trial: {exc}")
            return None
        delta = sum(
            energy_delta_uj(self._last_energy[zone.name], energy[zone.name], zone.max_range_uj)
            for zone in self.sensors.rapl_zones
        )
        self._last_energy = energy
        self._energy_uj += delta
        return delta

    def start(self, now: float) -> dict[str, float]:
        """Take the first reading; returns the current temperature when available."""
        if self._start is not None:
            raise RuntimeError("TrialSampler.start called twice")
        self._start = self._last_time = now
        if self._power_ok:
            try:
                self._last_energy = self.sensors.read_energy()
            except SensorReadError as exc:
                self._lose_power(f"RAPL energy_uj unreadable at trial start: {exc}")
        celsius = self._read_temperature()
        return {TEMP: celsius} if celsius is not None else {}

    def sample(self, now: float) -> dict[str, float]:
        """Current temperature and the mean watts since the previous sample, where measurable."""
        if self._start is None or self._finished:
            raise RuntimeError("TrialSampler.sample called outside start()..finish()")
        out: dict[str, float] = {}
        celsius = self._read_temperature()
        if celsius is not None:
            out[TEMP] = celsius
        delta = self._read_energy_delta()
        elapsed = now - self._last_time
        if delta is not None and elapsed > 0:
            out[WATTS] = delta / 1e6 / elapsed
        self._last_time = now
        return out

    def finish(self, now: float) -> dict[str, float]:
        """Take a last reading and return the trial's KPIs: max temperature and mean watts."""
        self.sample(now)
        self._finished = True
        started = self._start if self._start is not None else now
        kpis: dict[str, float] = {}
        if self._max_temp is not None:
            kpis[TEMP] = self._max_temp
        elif self.sensors.temperature_available:
            self.missing[TEMP] = "no temperature sensor could be read during the trial"
        elapsed = now - started
        if self._power_ok and self._last_energy is not None:
            if elapsed > 0:
                kpis[WATTS] = self._energy_uj / 1e6 / elapsed
            else:
                self.missing[WATTS] = "trial too short to measure power"
        return kpis
