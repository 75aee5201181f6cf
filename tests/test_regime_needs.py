"""When a regime is too short for its stressors: the model, and ``validate``'s warning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kloros_orchestrator.config import defaults_dir, load_config
from kloros_orchestrator.model import RegimeSpec, StressorSpec
from kloros_orchestrator.regime_needs import (
    duration_warnings,
    seconds_needed,
    seconds_per_bogo_op,
    shortest_trial,
    size_bytes,
)

MEMRATE = StressorSpec(
    name="memrate", options={"memrate-bytes": "16M", "memrate-rd-mbs": 200, "memrate-wr-mbs": 200}
)
NO_OVERRIDES: dict[str, float | None] = {}


def test_sizes_in_stress_ng_notation() -> None:
    assert size_bytes("16M") == 16 << 20
    assert size_bytes("512k") == 512 << 10
    assert size_bytes("1g") == 1 << 30
    assert size_bytes(4096) == 4096.0
    assert size_bytes("lots") is None
    assert size_bytes(True) is None


def test_memrate_per_op_time_follows_bytes_over_rate() -> None:
    # Measured here: 16 MiB at 200 MB/s completes a bogo-op about every 2.5 s; 8 MiB twice as often.
    per_op = seconds_per_bogo_op(MEMRATE)
    assert per_op == pytest.approx(2.52, rel=0.01)
    half = StressorSpec(name="memrate", options={**MEMRATE.options, "memrate-bytes": "8M"})
    assert seconds_per_bogo_op(half) == pytest.approx(per_op / 2)
    reads_only = StressorSpec(name="memrate", options={"memrate-bytes": "16M", "memrate-rd-mbs": 200})
    assert seconds_per_bogo_op(reads_only) == pytest.approx(per_op / 2)
    # Not throttled: fast, no need.
    assert seconds_per_bogo_op(StressorSpec(name="memrate", options={"memrate-bytes": "16M"})) is None
    assert seconds_per_bogo_op(StressorSpec(name="cpu")) is None


def test_a_regime_needs_two_bogo_ops_of_its_slowest_stressor() -> None:
    spec = RegimeSpec(duration=10, stressors=[StressorSpec(name="cpu"), MEMRATE])
    need = seconds_needed(spec)
    assert need is not None and need[1] == "memrate" and need[0] == pytest.approx(5.03, rel=0.01)
    assert seconds_needed(RegimeSpec(duration=1, stressors=[StressorSpec(name="cpu")])) is None


def test_shortest_trial_is_min_seconds_else_the_shortest_override() -> None:
    spec = RegimeSpec(duration=10, stressors=[MEMRATE])
    overrides = {"dream.first_look_seconds": 2.0, "phase.trial_seconds": None}
    assert shortest_trial(spec, overrides) == (2.0, "dream.first_look_seconds")
    assert shortest_trial(spec, NO_OVERRIDES) == (10, "duration")
    declared = RegimeSpec(duration=10, stressors=[MEMRATE], min_seconds=5)
    assert shortest_trial(declared, overrides) == (5, "min_seconds")


def test_warnings_name_the_file_regime_stressor_and_what_allows_the_short_trial() -> None:
    regimes = {
        "idle": RegimeSpec(duration=10, stressors=[MEMRATE]),
        "normal": RegimeSpec(duration=3, stressors=[MEMRATE]),
        "stress": RegimeSpec(duration=10, stressors=[MEMRATE], min_seconds=5),
        "mixed": RegimeSpec(duration=1, stressors=[StressorSpec(name="cpu")]),
    }
    warned = duration_warnings("mem.yaml", regimes, {"dream.first_look_seconds": 2.0})
    assert len(warned) == 2
    assert warned[0].startswith("mem.yaml: idle: memrate needs trials of at least 5.03 s")
    assert "but dream.first_look_seconds allows 2 s" in warned[0]
    assert "declare min_seconds" in warned[0]
    assert warned[1].startswith("mem.yaml: normal: memrate")
    assert "allows 2 s" in warned[1]
    assert duration_warnings("mem.yaml", regimes, NO_OVERRIDES)[0].startswith("mem.yaml: normal:")
    assert "but its duration allows 3 s" in duration_warnings("mem.yaml", regimes, NO_OVERRIDES)[0]


def test_the_embedded_regimes_need_no_warning() -> None:
    assert load_config().warnings == ()


def test_validate_warns_on_a_regime_without_min_seconds_and_still_exits_0(tmp_path: Path) -> None:
    (tmp_path / "regimes").mkdir()
    memory = yaml.safe_load((defaults_dir() / "regimes" / "memory.yaml").read_text())
    del memory["idle"]["min_seconds"]
    (tmp_path / "regimes" / "memory.yaml").write_text(yaml.safe_dump(memory))
    cfg = tmp_path / "dream.yaml"
    cfg.write_text(yaml.safe_dump({"dream": {"domains": ["memory"]}, "state_dir": str(tmp_path / "s")}))
    assert load_config(cfg).warnings != ()
    done = subprocess.run(
        [sys.executable, "-m", "kloros_orchestrator", "validate", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"warning: {tmp_path / 'regimes' / 'memory.yaml'}: idle: memrate needs trials" in done.stderr
    assert "but dream.first_look_seconds allows 2 s" in done.stderr
