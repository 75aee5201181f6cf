from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kloros_orchestrator.errors import DomainError
from kloros_orchestrator.spica import (
    KnobJournal,
    SpicaDomain,
    available_domains,
    get_domain_class,
    make_generic_domain,
    unregister,
)
from kloros_orchestrator.spica.registry import open_journal
from kloros_orchestrator.testing import comparable, load_regimes, write_tree

OPTIONS: dict[str, Any] = {
    "description": "network buffers",
    "knobs": {
        "rmem_max": {
            "type": "int",
            "low": 4096,
            "high": 16777216,
            "log": True,
            "path": "proc/sys/net/core/rmem_max",
        },
        "qdisc": {"type": "choice", "choices": ["fq", "fq_codel"], "path": "proc/sys/net/core/default_qdisc"},
        "threads": {"type": "int", "low": 1, "high": 8, "default": 2},
    },
    "kpis": ["throughput_ops", "p99_latency_us"],
}


@pytest.fixture
def generic_name() -> Iterator[str]:
    name = "net_buffers"
    yield name
    unregister(name)


def test_generic_domain_from_yaml_alone(tmp_path: Path, generic_name: str) -> None:
    cls = make_generic_domain(generic_name, OPTIONS)
    assert issubclass(cls, SpicaDomain) and cls.kind == "generic"
    assert get_domain_class(generic_name) is cls and generic_name in available_domains()
    assert make_generic_domain(generic_name, dict(OPTIONS)) is cls
    root = tmp_path / "sysfs"
    write_tree(
        root, {"proc/sys/net/core/rmem_max": "212992\n", "proc/sys/net/core/default_qdisc": "fq_codel\n"}
    )
    dom = cls(
        sysfs_root=root,
        journal=KnobJournal(tmp_path / "j"),
        regimes=load_regimes("cpu"),
        scratch_dir=tmp_path / "s",
    )
    dom.discover()
    assert dom.support == "ok" and not dom.process_scoped()
    assert dom.stock_genome() == {"rmem_max": 212992, "qdisc": "fq_codel", "threads": 2}
    before = comparable(root, set())
    dom.apply({"rmem_max": 4096, "qdisc": "fq", "threads": 4})
    assert (root / "proc/sys/net/core/rmem_max").read_text() == "4096"
    assert dom.restore() == []
    assert comparable(root, set()) == before
    spec = dom.build_workload("stress", {"threads": 4})
    assert spec.env == {"KLR_KNOB_THREADS": "4"} and spec.stressors and spec.command is None
    assert dom.kpi_names() == {"throughput_ops", "p99_latency_us", "temp_c", "watts"}


def test_generic_command_workload(tmp_path: Path, generic_name: str) -> None:
    opts = {
        "knobs": {"level": {"type": "int", "low": 1, "high": 9, "default": 5}},
        "workload": {"command": [sys.executable, "-c", "print('{\"score\": 1}')"]},
        "kpis": ["score"],
    }
    cls = make_generic_domain(generic_name, opts)
    dom = cls(
        sysfs_root=tmp_path,
        journal=KnobJournal(tmp_path / "j"),
        regimes=load_regimes("audio"),
        scratch_dir=tmp_path / "s",
    )
    dom.discover()
    spec = dom.build_workload("idle", {"level": 7})
    assert spec.command is not None and spec.env["KLR_KNOB_LEVEL"] == "7"
    assert dom.process_scoped() and dom.parallel_limit(3) == min(3, dom.cpus)


def test_generic_refusals(generic_name: str) -> None:
    with pytest.raises(DomainError, match="already registered"):
        make_generic_domain("cpu", OPTIONS)
    make_generic_domain(generic_name, OPTIONS)
    with pytest.raises(DomainError, match="already registered"):
        make_generic_domain(generic_name, {**OPTIONS, "kpis": ["throughput_ops"]})
    with pytest.raises(DomainError, match="unknown option"):
        make_generic_domain("other_name", {"knobz": {}})
    with pytest.raises(DomainError, match="must be relative"):
        make_generic_domain(
            "escape",
            {"knobs": {"x": {"type": "int", "low": 0, "high": 1, "path": "proc/sys/../../etc/passwd"}}},
        )
    with pytest.raises(DomainError, match="must be relative"):
        make_generic_domain(
            "outside", {"knobs": {"x": {"type": "int", "low": 0, "high": 1, "path": "etc/passwd"}}}
        )
    with pytest.raises(DomainError, match="needs kpis"):
        make_generic_domain("cmd", {"workload": {"command": ["prog"]}})
    assert "escape" not in available_domains() and "cmd" not in available_domains()


def test_a_generic_domains_crash_journal_is_restored_at_start_up(tmp_path: Path, generic_name: str) -> None:
    """Its knobs come from the configuration, which registers the class before the journal is opened."""
    cls = make_generic_domain(generic_name, OPTIONS)
    root = tmp_path / "sysfs"
    write_tree(
        root, {"proc/sys/net/core/rmem_max": "212992\n", "proc/sys/net/core/default_qdisc": "fq_codel\n"}
    )
    before = comparable(root, set())
    dom = cls(sysfs_root=root, journal=KnobJournal(tmp_path / "j"), regimes={}, scratch_dir=tmp_path / "s")
    dom.discover()
    dom.apply({"rmem_max": 4096, "qdisc": "fq"})  # then the run dies without restoring
    journal = open_journal(tmp_path / "j", sysfs_root=root, scratch_root=tmp_path / "s")
    assert journal.restore_all() == []
    assert comparable(root, set()) == before and journal.pending() == []
