"""The study key: built from the manifest and host facts, hashed stably, refusing unknown fields."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kloros_orchestrator.fleet.errors import KeyUnavailable
from kloros_orchestrator.fleet.key import StudyKey, cpu_model, knob_space_hash, memory_gib, study_key

SPACE = {
    "vm.swappiness": {"type": "int", "low": 0, "high": 100},
    "sched_policy": {"type": "choice", "choices": ["other", "batch"]},
}
MANIFEST: dict[str, Any] = {
    "kernel": "6.1.0-28-amd64",
    "cpus": 2,
    "stress_ng_version": "0.15.06",
    "host": "a",
}


def _key(**changes: Any) -> StudyKey:
    args: dict[str, Any] = {
        "domain": "cpu",
        "space": SPACE,
        "manifest": MANIFEST,
        "cpu_model_name": "AMD EPYC 7B13",
        "memory": 24,
    }
    args.update(changes)
    return study_key(**args)


def test_the_same_host_facts_give_the_same_digest_whatever_the_order() -> None:
    reordered = dict(reversed(list(SPACE.items())))
    assert _key().digest() == _key(space=reordered).digest()
    assert _key().digest() == _key(manifest={**MANIFEST, "host": "b", "seed": 7}).digest()  # not key fields
    assert len(_key().digest()) == 64


@pytest.mark.parametrize(
    "change",
    [
        {"domain": "memory"},
        {"space": {**SPACE, "vm.dirty_ratio": {"type": "int", "low": 1, "high": 50}}},
        {"cpu_model_name": "Intel Xeon"},
        {"memory": 32},
        {"manifest": {**MANIFEST, "kernel": "6.12.0"}},
        {"manifest": {**MANIFEST, "cpus": 4}},
        {"manifest": {**MANIFEST, "stress_ng_version": "0.18.0"}},
        {"measurement": "f" * 64},
    ],
)
def test_any_key_field_changes_the_digest_and_is_named(change: dict[str, Any]) -> None:
    other = _key(**change)
    assert other.digest() != _key().digest()
    assert len(_key().differences(other)) == 1


def test_a_field_unknown_on_this_host_refuses_a_key() -> None:
    with pytest.raises(KeyUnavailable, match="cpu_model, stress_ng_version"):
        _key(cpu_model_name=None, manifest={**MANIFEST, "stress_ng_version": ""})


def test_the_digest_is_stable_across_interpreters() -> None:
    """No per-process hash seed in it: another Python process computes the same digest."""
    code = (
        "from kloros_orchestrator.fleet.key import study_key\n"
        f"print(study_key(domain='cpu', space={SPACE!r}, manifest={MANIFEST!r},"
        " cpu_model_name='AMD EPYC 7B13', memory=24).digest())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == _key().digest()


def test_space_hash_sees_a_changed_range() -> None:
    narrower = {**SPACE, "vm.swappiness": {"type": "int", "low": 0, "high": 60}}
    assert knob_space_hash(SPACE) != knob_space_hash(narrower)


def test_host_facts_are_read_from_proc_files(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: AMD  EPYC 7B13\nprocessor\t: 1\n")
    (tmp_path / "meminfo").write_text("MemTotal:       24603112 kB\nMemFree: 1 kB\n")
    assert cpu_model(tmp_path / "cpuinfo") == "AMD EPYC 7B13"
    assert memory_gib(tmp_path / "meminfo") == 23  # 23.46 GiB, rounded
    (tmp_path / "arm").write_text("processor\t: 0\nCPU part\t: 0xd0c\n")
    assert cpu_model(tmp_path / "arm") == "0xd0c"
    assert cpu_model(tmp_path / "missing") is None
    assert memory_gib(tmp_path / "cpuinfo") is None


def test_identical_hosts_with_a_few_mib_apart_share_the_memory_field(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("MemTotal:       16365780 kB\n")
    b.write_text("MemTotal:       16361684 kB\n")  # 4 MiB less (firmware reservation)
    assert memory_gib(a) == memory_gib(b) == 16


def test_the_measurement_field_follows_the_regimes_the_caps_and_the_trial_lengths(tmp_path: Path) -> None:
    """Hosts given other workloads (a regime file, a cap, ``dream.trial_seconds``) or another race
    (``dream.racing``) join another study;
    the configuration's own spelling (file order, an unrelated key) does not matter."""
    from kloros_orchestrator.config import load_config
    from kloros_orchestrator.runtime.fleet_context import measurement_of

    def loaded(regime: str, *, trial: int = 1, cap: int = 90, extra: str = "", race: str = "") -> str:
        d = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
        (d / "regimes").mkdir(parents=True)
        (d / "caps").mkdir()
        (d / "regimes" / "cpu.yaml").write_text(
            "".join(f"{r}: {regime}\n" for r in ("idle", "normal", "stress", "mixed"))
        )
        (d / "caps" / "cpu.yaml").write_text(f"temp_c: {cap}\n")
        (d / "k.yaml").write_text(
            f"state_dir: {d / 'state'}\nregimes_dir: {d / 'regimes'}\ncaps_dir: {d / 'caps'}\n{extra}"
            f"dream: {{domains: [cpu], trial_seconds: {trial}{race}}}\n"
        )
        return measurement_of(load_config(d / "k.yaml"), "cpu")

    two = "{duration: 2, stressors: [{name: cpu, instances: 1}]}"
    base = loaded(two)
    assert len(base) == 64 and base == loaded(two, extra="seed: 9\n")
    assert base != loaded("{duration: 3, stressors: [{name: cpu, instances: 1}]}")
    assert base != loaded(two, trial=2)
    assert base != loaded(two, cap=80)
    assert base != loaded(two, race=", racing: {indifference: 0.05}"), "every leader replays one race"
