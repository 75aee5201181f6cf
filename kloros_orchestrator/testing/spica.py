"""The contract every SPICA domain must meet: a pytest suite to subclass, plus its file helpers.

Each domain's test module subclasses :class:`SpicaDomainContract`, sets ``domain_cls`` and writes a
fake sysfs tree holding all of the domain's knobs in ``populate``. The tests then check discovery,
the baseline genome, the engine declarations, apply and byte-exact restore through the journal,
workloads for every regime, identity, and that absent or unusable knobs drop out (a domain left
with none is unsupported).

A third-party domain runs the same suite (pytest is needed, as in the ``test`` extra)::

    from pathlib import Path

    from kloros_orchestrator.testing import SpicaDomainContract, write_tree
    from my_package.domain import SpicaNetwork  # registered with kloros_orchestrator.spica.register

    class TestSpicaNetwork(SpicaDomainContract):
        domain_cls = SpicaNetwork
        regimes_dir = Path(__file__).parent / "regimes"  # holds network.yaml (idle/normal/stress/mixed)

        def populate(self, root: Path) -> None:
            write_tree(root, {"proc/sys/net/core/somaxconn": "4096\n"})

Hooks (``options``, ``cpus``, ``empty_tree_support``, ``make_journal``, ``snapshot``,
``break_knobs``) adapt it to domains that need options or restore state outside the fake tree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
import yaml
from loguru import logger

from kloros_orchestrator.config import defaults_dir
from kloros_orchestrator.engine.space import parse_param
from kloros_orchestrator.errors import DomainError
from kloros_orchestrator.model import REGIMES, Genome, RegimeSpec, Scalar, WorkloadSpec
from kloros_orchestrator.spica import Knob, KnobJournal, SpicaDomain, code_hash, get_domain_class

__all__ = [
    "ENGINE_KEYS",
    "LogLines",
    "SpicaDomainContract",
    "comparable",
    "different_value",
    "invalid_value",
    "load_regimes",
    "snapshot_files",
    "write_tree",
]

ENGINE_KEYS = {"type", "low", "high", "log", "choices"}


def load_regimes(domain: str, regimes_dir: Path | None = None) -> dict[str, RegimeSpec]:
    """``<regimes_dir>/<domain>.yaml`` (default: the shipped regimes), converted the way the config
    loader does."""
    directory = defaults_dir() / "regimes" if regimes_dir is None else Path(regimes_dir)
    raw = yaml.safe_load((directory / f"{domain}.yaml").read_text())
    return {name: msgspec.convert(spec, RegimeSpec) for name, spec in raw.items()}


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def snapshot_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def comparable(root: Path, bracket_paths: set[Path]) -> dict[str, Any]:
    """Every file's bytes, except kernel bracket files (``always [madvise] never``): the kernel only
    accepts the bare value back, which a regular file cannot turn into the bracket list again, so
    for those the active value is compared."""
    out: dict[str, Any] = {}
    for rel, data in snapshot_files(root).items():
        path = (root / rel).absolute()
        if path in bracket_paths:
            text = data.decode()
            m = re.search(r"\[([^\]]+)\]", text)
            out[rel] = ("active", m.group(1) if m else text.strip())
        else:
            out[rel] = data
    return out


def different_value(knob: Knob, stock: Scalar) -> Scalar:
    """A valid value of ``knob`` other than ``stock``."""
    if knob.type == "bool":
        return not stock
    if knob.type == "choice":
        return next(c for c in knob.choices if str(c) != str(stock))
    assert knob.low is not None and knob.high is not None
    if knob.type == "int":
        return int(knob.low) if stock != knob.low else int(knob.high)
    return float(knob.low) if not math.isclose(float(stock), knob.low) else float(knob.high)


def invalid_value(knob: Knob) -> Any:
    if knob.type == "bool":
        return "maybe"
    if knob.type == "choice":
        return "no-such-choice"
    assert knob.high is not None
    return knob.high * 2 + 1


class LogLines:
    """Collects loguru messages for the duration of a test."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, message: Any) -> None:
        self.lines.append(str(message).rstrip("\n"))


class SpicaDomainContract:
    """Shared suite. Override ``domain_cls``, ``populate`` and, where needed, the hooks below.

    ``regimes_dir`` holds ``<domain name>.yaml``; None means the regimes shipped with the package.
    """

    domain_cls: ClassVar[type[SpicaDomain]]
    regimes_dir: ClassVar[Path | None] = None
    options: ClassVar[dict[str, Any]] = {}
    cpus: ClassVar[int] = 4
    empty_tree_support: ClassVar[str] = "unsupported"

    # --- hooks -------------------------------------------------------------------------------
    def populate(self, root: Path) -> None:
        """Write fake files for every knob the domain declares."""

    def make_journal(self, directory: Path) -> KnobJournal:
        return KnobJournal(directory)

    def snapshot(self, root: Path, domain: SpicaDomain) -> dict[str, Any]:
        """State that must come back unchanged after restore (fake tree; fakes add their own)."""
        bracket = {p for k in domain.knobs if k.fmt == "bracket" for p in k.resolve_paths(root)}
        return comparable(root, bracket)

    def break_knobs(self, root: Path, domain: SpicaDomain) -> dict[str, str]:
        """Make two knobs unusable; return knob name → expected fragment of its drop reason."""
        file_knobs = [k for k in domain.knobs if k.scope == "system" and k.path is not None]
        if not file_knobs:
            pytest.skip("no file-backed knobs")
        broken: dict[str, str] = {}
        first = file_knobs[0].resolve_paths(root)[0]
        first.unlink()
        broken[file_knobs[0].name] = "absent"
        if len(file_knobs) > 1:
            second = file_knobs[1].resolve_paths(root)[0]
            second.unlink()
            second.mkdir()  # a directory where the file should be
            broken[file_knobs[1].name] = "not a regular file"
        return broken

    def make_domain(self, root: Path, tmp_path: Path, **overrides: Any) -> SpicaDomain:
        kwargs: dict[str, Any] = {
            "sysfs_root": root,
            "journal": self.make_journal(tmp_path / "journal"),
            "regimes": load_regimes(self.domain_cls.name, self.regimes_dir),
            "scratch_dir": tmp_path / "scratch",
            "options": dict(self.options),
            "config_hash": "cfg-123",
            "cpus": self.cpus,
        }
        kwargs.update(overrides)
        return self.domain_cls(**kwargs)

    # --- fixtures ----------------------------------------------------------------------------
    @pytest.fixture
    def root(self, tmp_path: Path) -> Path:
        root = tmp_path / "sysfs"
        root.mkdir()
        self.populate(root)
        return root

    @pytest.fixture
    def domain(self, root: Path, tmp_path: Path) -> SpicaDomain:
        dom = self.make_domain(root, tmp_path)
        dom.discover()
        return dom

    @pytest.fixture
    def log_lines(self) -> Iterator[LogLines]:
        sink = LogLines()
        handler = logger.add(sink, format="{message}", level="DEBUG")
        yield sink
        logger.remove(handler)

    def changed_genome(self, domain: SpicaDomain) -> Genome:
        stock = domain.stock_genome()
        return domain.validate_genome({k.name: different_value(k, stock[k.name]) for k in domain.knobs})

    # --- the contract ------------------------------------------------------------------------
    def test_class_is_registered_spica_domain(self) -> None:
        assert issubclass(self.domain_cls, SpicaDomain)
        assert get_domain_class(self.domain_cls.name) is self.domain_cls
        assert self.domain_cls.__name__.startswith("Spica")

    def test_discover_on_full_tree_is_ok(self, domain: SpicaDomain) -> None:
        assert domain.support == "ok", domain.support_reason
        assert domain.dropped == {}
        assert domain.knobs
        assert {k.name for k in domain.knobs} == {k.name for k in domain.declare_knobs()}

    def test_stock_genome_is_what_discovery_read(self, domain: SpicaDomain, root: Path) -> None:
        stock = domain.stock_genome()
        assert set(stock) == {k.name for k in domain.knobs}
        for knob in domain.knobs:
            if knob.scope == "process":
                assert stock[knob.name] == knob.default
            elif knob.path is not None:
                text = knob.resolve_paths(root)[0].read_text()
                assert str(stock[knob.name]) == str(knob.decode(text))

    def test_search_space_entries_are_engine_declarations(self, domain: SpicaDomain) -> None:
        space = domain.search_space()
        stock = domain.stock_genome()
        assert set(space) == set(stock)
        for name, entry in space.items():
            assert set(entry) == ENGINE_KEYS, name
            assert entry["type"] in ("int", "float", "choice", "bool")
            if entry["type"] in ("int", "float"):
                assert entry["low"] < entry["high"]
                assert entry["low"] <= stock[name] <= entry["high"], name
                assert entry["choices"] is None and isinstance(entry["log"], bool)
                if entry["log"]:
                    assert entry["low"] > 0
                if entry["type"] == "int":
                    assert isinstance(entry["low"], int) and isinstance(entry["high"], int)
            elif entry["type"] == "choice":
                assert len(entry["choices"]) >= 2
                assert stock[name] in entry["choices"]
                assert entry["low"] is None and entry["high"] is None and entry["log"] is None
            else:
                assert isinstance(stock[name], bool)
                assert entry["low"] is entry["high"] is entry["log"] is entry["choices"] is None

    def test_search_space_is_accepted_by_the_engine(self, domain: SpicaDomain) -> None:
        stock = domain.stock_genome()
        for name, decl in domain.search_space().items():
            param, fixed = parse_param(name, decl)
            assert fixed is None
            assert param.contains(stock[name]), (name, stock[name])

    def test_apply_writes_files_and_journals_originals_first(self, domain: SpicaDomain, root: Path) -> None:
        originals = {
            str(p): p.read_text()
            for k in domain.knobs
            if k.scope == "system" and k.path is not None
            for p in k.resolve_paths(root)
        }
        genome = self.changed_genome(domain)
        domain.apply(genome)
        for knob in domain.knobs:
            if knob.scope == "system" and knob.path is not None:
                for p in knob.resolve_paths(root):
                    assert str(knob.decode(p.read_text())) == str(genome[knob.name]), knob.name
        journaled = {e.path: e.original for e in domain.journal.pending() if e.path.startswith("/")}
        assert journaled == originals
        assert all(e.restore_argv is None for e in domain.journal.pending())  # no command on disk
        domain.restore()

    def test_a_crashed_runs_journal_is_restored_from_declarations_alone(
        self, domain: SpicaDomain, root: Path, tmp_path: Path
    ) -> None:
        before = self.snapshot(root, domain)
        domain.apply(self.changed_genome(domain))
        # The next start-up: a new journal on the same directory, a fresh instance never discovered;
        # restore_knobs() must cover every knob apply journals, or the entry would be rejected.
        journal = self.make_journal(tmp_path / "journal")
        journal.declare(self.make_domain(root, tmp_path, journal=journal).restore_targets())
        assert journal.restore_all() == []
        assert self.snapshot(root, domain) == before
        assert journal.pending() == [] and not list((tmp_path / "journal").glob("*.rejected-*"))

    def test_restore_brings_back_the_exact_original_state(self, domain: SpicaDomain, root: Path) -> None:
        before = self.snapshot(root, domain)
        domain.apply(self.changed_genome(domain))
        if any(k.scope == "system" for k in domain.knobs):
            assert self.snapshot(root, domain) != before
        assert domain.restore() == []
        assert self.snapshot(root, domain) == before
        assert domain.journal.pending() == []

    def test_first_original_wins_across_candidates(self, domain: SpicaDomain, root: Path) -> None:
        before = self.snapshot(root, domain)
        stock = domain.stock_genome()
        domain.apply(self.changed_genome(domain))
        domain.apply(stock)
        domain.apply(self.changed_genome(domain))
        assert domain.restore() == []
        assert self.snapshot(root, domain) == before

    def test_invalid_value_is_refused_before_any_write(self, domain: SpicaDomain, root: Path) -> None:
        before = self.snapshot(root, domain)
        knob = domain.knobs[0]
        with pytest.raises(DomainError):
            domain.apply({knob.name: invalid_value(knob)})
        with pytest.raises(DomainError):
            domain.apply({"no_such_knob": 1})
        assert self.snapshot(root, domain) == before
        assert domain.journal.pending() == []

    def test_workload_for_every_regime(self, domain: SpicaDomain, tmp_path: Path) -> None:
        assert set(REGIMES) <= set(domain.regimes)
        for genome in (domain.stock_genome(), self.changed_genome(domain)):
            for regime in REGIMES:
                spec = domain.build_workload(regime, genome)
                assert isinstance(spec, WorkloadSpec)
                assert spec.duration_s == domain.regimes[regime].duration > 0
                assert all(isinstance(s.instances, int) and s.instances >= 0 for s in spec.stressors)
                if spec.stressors:
                    assert spec.extra_args[-2:] == ("--temp-path", str(tmp_path / "scratch"))
                else:
                    assert spec.command is not None, "a workload runs stress-ng or a command"
                # An override holds, except below what the regime's stressors need (min_seconds).
                floor = domain.regimes[regime].min_seconds or 0.0
                assert domain.build_workload(regime, genome, duration_s=1.5).duration_s == max(1.5, floor)

    def test_unusable_knobs_drop_out_with_one_log_line_each(
        self, root: Path, tmp_path: Path, log_lines: LogLines
    ) -> None:
        probe_domain = self.make_domain(root, tmp_path)
        probe_domain.discover()
        broken = self.break_knobs(root, probe_domain)
        log_lines.lines.clear()
        dom = self.make_domain(root, tmp_path)
        dom.discover()
        assert set(dom.dropped) == set(broken)
        for name, fragment in broken.items():
            assert fragment in dom.dropped[name]
            mentions = [line for line in log_lines.lines if f"knob {name} dropped" in line]
            assert len(mentions) == 1, mentions
        assert {k.name for k in dom.knobs} == {k.name for k in probe_domain.knobs} - set(broken)

    def test_empty_tree_leaves_no_system_knob(self, tmp_path: Path) -> None:
        empty = tmp_path / "empty"
        empty.mkdir()
        dom = self.make_domain(empty, tmp_path)
        dom.discover()
        assert dom.support == self.empty_tree_support, dom.support_reason
        assert not [k for k in dom.knobs if k.scope == "system"]
        if dom.support != "ok":
            assert dom.support_reason
            assert dom.search_space() == {}

    def test_spawn_gives_identity_and_manifest(self, domain: SpicaDomain) -> None:
        stock = domain.stock_genome()
        first = domain.spawn(stock)
        assert re.fullmatch(rf"spica-{domain.name}-[0-9a-f]{{10}}", first.spica_id)
        assert domain.spawn(dict(stock)).spica_id == first.spica_id
        assert domain.spawn(stock, generation=1).spica_id != first.spica_id
        child = domain.spawn(
            self.changed_genome(domain), parent=first.spica_id, generation=1, mutations=["all knobs"]
        )
        assert child.spica_id != first.spica_id
        manifest = child.manifest()
        assert manifest["code_hash"] == code_hash() and re.fullmatch(r"[0-9a-f]{64}", manifest["code_hash"])
        assert manifest["config_hash"] == "cfg-123"
        assert set(manifest["knobs"]) == set(stock)
        assert manifest["lineage"] == {"parent": first.spica_id, "generation": 1, "mutations": ["all knobs"]}
        assert manifest["domain"] == domain.name
        event = child.telemetry("trial_done", regime="idle")
        assert event["event"] == "trial_done" and event["spica_id"] == child.spica_id
        assert event["domain"] == domain.name and isinstance(event["ts"], float)

    def test_parallel_rule_follows_knob_scopes(self, domain: SpicaDomain) -> None:
        process_only = all(k.scope == "process" for k in domain.knobs)
        assert domain.process_scoped() is process_only
        assert domain.parallel_limit(8) == (min(8, domain.cpus) if process_only else 1)
