"""The live host: a genome's settings, the factory values, writing settings and reading them back.

Every file is read and written through the confined knob primitives (``spica/journal.py``): never
through a symlink, never outside ``sysfs_root``'s kernel trees. Values are compared by what they
mean, not by their bytes: a bracket file by its active value (``always [madvise] never`` holds
``madvise``), a number by its value (``"60\\n"`` holds 60).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kloros_orchestrator.errors import DomainError
from kloros_orchestrator.host.records import FactoryKnob, KnobSetting
from kloros_orchestrator.model import Genome, Scalar
from kloros_orchestrator.spica.base import AFFINITY, SpicaDomain, affinity_layouts
from kloros_orchestrator.spica.knobs import (
    Knob,
    RefusedPath,
    active_token,
    parse_value,
    read_knob,
    restore_text_of,
    same_value,
    write_knob,
)


@dataclass(frozen=True)
class Drift:
    """One file that does not hold its expected value."""

    path: str  # absolute
    knob: str
    expected: str
    found: str

    def line(self) -> str:
        return f"{self.path}, expected {self.expected}, found {self.found}"


def _relative(path: Path, sysfs_root: Path) -> str:
    return str(Path(path).relative_to(Path(sysfs_root).absolute()))


def settings_of(dom: SpicaDomain, genome: Mapping[str, Any]) -> list[KnobSetting]:
    """The settings a (validated) genome of a discovered domain stands for on this host."""
    full = dom.validate_genome(genome)
    out: list[KnobSetting] = []
    for knob in dom.knobs:
        out.append(_setting(dom, knob, full[knob.name]))
    return out


def _setting(dom: SpicaDomain, knob: Knob, value: Scalar) -> KnobSetting:
    """``value`` of ``knob`` with where it lives on this host (files, or a layout's CPUs)."""
    paths: tuple[str, ...] = ()
    if knob.scope == "system" and knob.path is not None:
        paths = tuple(_relative(p, dom.sysfs_root) for p in knob.resolve_paths(dom.sysfs_root))
    cpus = affinity_layouts(dom.cpu_ids()).get(str(value)) if knob.name == AFFINITY else None
    return KnobSetting(
        knob=knob.name, scope=knob.scope, type=knob.type, value=value, text=knob.encode(value),
        paths=paths, fmt=knob.fmt, cpus=cpus, description=knob.description,
    )  # fmt: skip


def declared_settings(dom: SpicaDomain, genome: Mapping[str, Any]) -> list[KnobSetting]:
    """The settings of ``genome`` from the domain's declared knobs, without discovery (which probes
    by writing): for exporting a variant on a host, or a machine, where the domain does not run.
    Every knob of the genome must be declared and its value must fit its type."""
    declared = {k.name: k for k in dom.declare_knobs()}
    unknown = sorted(set(genome) - set(declared))
    if unknown:
        raise DomainError(f"{dom.name}: knob(s) {unknown} are not declared by this domain")
    out: list[KnobSetting] = []
    for name, raw in genome.items():
        out.append(_setting(dom, declared[name], _loose(declared[name], raw)))
    return out


def _loose(knob: Knob, value: Any) -> Scalar:
    """``value`` as the knob's type; outside the declared range is allowed (discovery widens a range
    to the host's own value), a value of another type is not."""
    try:
        return knob.coerce(value)
    except DomainError:
        if knob.type in ("int", "float") and isinstance(value, int | float) and not isinstance(value, bool):
            return int(value) if knob.type == "int" and float(value).is_integer() else float(value)
        if knob.type == "choice" and isinstance(value, str | int):
            return value  # a choice the host lists but the declaration does not
        raise


def factory_knobs(dom: SpicaDomain, at: str) -> list[FactoryKnob]:
    """The current text of every file-backed system knob of a discovered domain (read, no write)."""
    out: list[FactoryKnob] = []
    for knob in dom.knobs:
        if knob.scope != "system" or knob.path is None:
            continue
        root = dom.sysfs_root
        originals = {_relative(p, root): read_knob(p, root) for p in knob.resolve_paths(root)}
        out.append(FactoryKnob(knob.name, knob.type, knob.fmt, originals, recorded_at=at))
    return out


def restore_text(fk: FactoryKnob, original: str) -> str:
    """What to write to bring a file back to ``original`` (see ``spica.knobs.restore_text_of``)."""
    return restore_text_of(fk.fmt, original)


def factory_settings(factory: Mapping[str, FactoryKnob]) -> list[KnobSetting]:
    """The factory values as settings (what rollback writes and verify expects after it): one per
    knob, or one per group of its files when they held different texts (per-CPU files may)."""
    out: list[KnobSetting] = []
    for fk in factory.values():
        groups: dict[str, list[str]] = {}
        for path, original in fk.originals.items():
            groups.setdefault(restore_text(fk, original), []).append(path)
        for text, paths in groups.items():
            value = parse_value(fk.type, fk.fmt, text)
            setting = KnobSetting(
                knob=fk.knob, scope="system", type=fk.type, value=value, text=text,
                paths=tuple(paths), fmt=fk.fmt,
            )  # fmt: skip
            out.append(setting)
    return out


def setting_files(settings: Sequence[KnobSetting]) -> list[tuple[str, str]]:
    """The ``(relative path, text)`` writes of ``settings`` (file-backed system knobs only)."""
    return [(p, s.text) for s in settings if s.scope == "system" for p in s.paths]


def write_files(files: Sequence[tuple[str, str]], sysfs_root: Path) -> None:
    """Write ``(relative path, text)`` pairs in order; on a failure the files already written get
    their previous text back (best effort) and DomainError names the file."""
    done: list[tuple[Path, str]] = []
    for rel, text in files:
        path = Path(sysfs_root).absolute() / rel
        try:
            before = read_knob(path, sysfs_root)
            write_knob(path, text, sysfs_root)
        except (OSError, UnicodeDecodeError, RefusedPath) as e:
            for p, old in reversed(done):
                try:
                    write_knob(p, restore_text_of("bracket", old), sysfs_root)
                except (OSError, RefusedPath):
                    continue
            raise DomainError(f"writing {path} failed: {e}") from e
        done.append((path, before))


def drift_of(settings: Sequence[KnobSetting], sysfs_root: Path) -> list[Drift]:
    """Every file of ``settings`` whose live value differs from the setting (unreadable: drift too)."""
    out: list[Drift] = []
    for s in settings:
        for rel in s.paths if s.scope == "system" else ():
            path = Path(sysfs_root).absolute() / rel
            try:
                found = read_knob(path, sysfs_root)
            except (OSError, UnicodeDecodeError, RefusedPath) as e:
                out.append(Drift(str(path), s.knob, s.text.strip(), f"unreadable ({e})"))
                continue
            if not same_value(s.type, s.fmt, found, s.text):
                out.append(Drift(str(path), s.knob, active_token(s.fmt, s.text), active_token(s.fmt, found)))
    return out


def factory_genome(dom: SpicaDomain, factory: Mapping[str, FactoryKnob]) -> Genome:
    """The discovered domain's genome at its factory values (process knobs at their defaults;
    a knob without a factory entry at its value found at discovery)."""
    stock = dom.stock_genome()
    out: Genome = {}
    for knob in dom.knobs:
        fk = factory.get(knob.name)
        out[knob.name] = _factory_value(knob, fk) if fk is not None else stock[knob.name]
    return dom.validate_genome(out)


def _factory_value(knob: Knob, fk: FactoryKnob) -> Scalar:
    text = next(iter(fk.originals.values()), None)
    if text is None:
        raise DomainError(f"{knob.name}: factory entry without a file")
    try:
        return knob.coerce(knob.decode(text))
    except (ValueError, DomainError) as e:
        raise DomainError(f"{knob.name}: factory value {text.strip()!r} does not parse: {e}") from e


__all__ = [
    "Drift",
    "declared_settings",
    "drift_of",
    "factory_genome",
    "factory_knobs",
    "factory_settings",
    "restore_text",
    "same_value",
    "setting_files",
    "settings_of",
    "write_files",
]
