"""The shipped regimes/ and caps/ files: one of each per built-in domain, valid and consistent."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import yaml

from kloros_orchestrator.model import REGIMES, RegimeSpec
from kloros_orchestrator.spica import KnobJournal, get_domain_class
from kloros_orchestrator.testing import load_regimes

REPO = Path(__file__).resolve().parents[2]

BUILTIN = [
    "cpu",
    "memory",
    "storage",
    "os_scheduler",
    "power_thermal",
    "gpu",
    "audio",
    "asr_tts",
    "conversation",
]
MIB = {"K": 1 / 1024, "M": 1, "G": 1024}


def mib(value: object) -> float:
    text = str(value)
    return float(text[:-1]) * MIB[text[-1]] if text[-1] in MIB else float(text) / 2**20


@pytest.mark.parametrize("domain", BUILTIN)
def test_regimes_file_has_the_four_regimes(domain: str) -> None:
    regimes = load_regimes(domain)
    assert set(regimes) == set(REGIMES)
    for name, spec in regimes.items():
        assert isinstance(spec, RegimeSpec) and spec.duration > 0
        for s in spec.stressors:
            assert s.instances == "auto" or (isinstance(s.instances, int) and s.instances >= 0), name
    cls = get_domain_class(domain)
    if cls.kind == "command":
        assert all(not s.stressors and not s.probe for s in regimes.values())
    else:
        assert regimes["idle"].stressors, "idle is a light load, not nothing"
        assert len({s.name for s in regimes["mixed"].stressors}) >= 3 and regimes["mixed"].probe


@pytest.mark.parametrize("domain", BUILTIN)
def test_regimes_keep_memory_modest(domain: str) -> None:
    for name, spec in load_regimes(domain).items():
        total = 0.0
        for s in spec.stressors:
            count = 2 if s.instances == "auto" else int(s.instances)
            for opt in ("vm-bytes", "malloc-bytes", "memrate-bytes"):
                if opt in s.options:
                    per = mib(s.options[opt]) * (
                        int(s.options.get("malloc-max", 1)) if opt == "malloc-bytes" else 1
                    )
                    total += per * count
        assert total <= 256, f"{domain}/{name}: {total} MiB"


@pytest.mark.parametrize("domain", BUILTIN)
def test_caps_name_only_kpis_of_the_domain(domain: str, tmp_path: Path) -> None:
    caps = yaml.safe_load((REPO / "caps" / f"{domain}.yaml").read_text())
    assert isinstance(caps, dict) and caps
    assert all(isinstance(v, int | float) and v > 0 for v in caps.values())
    dom = get_domain_class(domain)(
        sysfs_root=tmp_path,
        journal=KnobJournal(tmp_path / "j"),
        regimes={},
        scratch_dir=tmp_path,
        options={"command": ["prog"], "kpis": ["latency_ms"]}
        if get_domain_class(domain).kind == "command"
        else {},
    )
    assert set(caps) <= dom.kpi_names(), domain


def test_regime_files_convert_strictly() -> None:
    raw = yaml.safe_load((REPO / "regimes" / "cpu.yaml").read_text())
    raw["idle"]["bogus"] = 1
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(raw["idle"], RegimeSpec)
