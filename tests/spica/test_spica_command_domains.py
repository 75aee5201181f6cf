from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from kloros_orchestrator.errors import DomainError
from kloros_orchestrator.model import TEMP
from kloros_orchestrator.spica import KnobJournal, parse_command_output
from kloros_orchestrator.spica.domains.asr_tts import SpicaAsrTts
from kloros_orchestrator.spica.domains.audio import SpicaAudio
from kloros_orchestrator.spica.domains.conversation import SpicaConversation
from kloros_orchestrator.testing import SpicaDomainContract, load_regimes

# A stand-in for an operator's benchmark: reads its knobs from the environment, prints KPIs.
SCRIPT = (
    "import json, os\n"
    "bs = int(os.environ['KLR_KNOB_BUFFER_FRAMES'])\n"
    "print('warming up')\n"
    "for i in range(3):\n"
    "    print(json.dumps({'latency_ms': bs / 48 + i, 'xruns': 0}))\n"
    "print(json.dumps({'regime': os.environ['KLR_REGIME'], 'mode': os.environ['KLR_KNOB_MODE']}))\n"
)
OPTIONS: dict[str, Any] = {
    "command": [sys.executable, "-c", SCRIPT],
    "knobs": {
        "buffer_frames": {"type": "int", "low": 64, "high": 4096, "log": True, "default": 256},
        "mode": {"type": "choice", "choices": ["fast", "safe"], "default": "safe"},
    },
    "kpis": {"latency_ms": "lower", "xruns": "lower"},
}


class TestSpicaAudioContract(SpicaDomainContract):
    domain_cls = SpicaAudio
    options: ClassVar[dict[str, Any]] = OPTIONS
    empty_tree_support = "ok"  # knobs are environment variables: no file needed


class TestSpicaAsrTtsContract(SpicaDomainContract):
    domain_cls = SpicaAsrTts
    options: ClassVar[dict[str, Any]] = OPTIONS
    empty_tree_support = "ok"  # knobs are environment variables: no file needed


class TestSpicaConversationContract(SpicaDomainContract):
    domain_cls = SpicaConversation
    options: ClassVar[dict[str, Any]] = OPTIONS
    empty_tree_support = "ok"  # knobs are environment variables: no file needed


def make(tmp_path: Path, options: dict[str, Any] | None) -> SpicaAudio:
    return SpicaAudio(
        sysfs_root=tmp_path,
        journal=KnobJournal(tmp_path / "journal"),
        regimes=load_regimes("audio"),
        scratch_dir=tmp_path / "scratch",
        options=options,
    )


@pytest.mark.parametrize("cls", [SpicaAudio, SpicaAsrTts, SpicaConversation])
def test_disabled_until_a_command_is_configured(tmp_path: Path, cls: type[SpicaAudio]) -> None:
    dom = cls(sysfs_root=tmp_path, journal=KnobJournal(tmp_path / "j"), regimes={}, scratch_dir=tmp_path)
    dom.discover()
    assert dom.support == "disabled" and dom.support_reason == "no command configured"
    assert dom.search_space() == {}


def test_command_runs_with_knobs_in_its_environment(tmp_path: Path) -> None:
    dom = make(tmp_path, OPTIONS)
    dom.discover()
    assert dom.support == "ok" and dom.process_scoped()
    spec = dom.build_workload("normal", {"buffer_frames": 480, "mode": "fast"})
    assert spec.command == tuple(OPTIONS["command"]) and spec.stressors == () and spec.probe is False
    assert spec.env["KLR_KNOB_BUFFER_FRAMES"] == "480" and spec.env["KLR_REGIME"] == "normal"
    assert spec.command is not None
    out = subprocess.run(
        list(spec.command),
        env={**os.environ, **spec.env},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert parse_command_output(out) == {"latency_ms": [10.0, 11.0, 12.0], "xruns": [0.0, 0.0, 0.0]}
    assert dom.extract_kpis(out) == {"latency_ms": 11.0, "xruns": 0.0}
    assert dom.kpi_names() == {"latency_ms", "xruns", TEMP, "watts"}
    assert dom.kpi_directions()["latency_ms"] == -1


def test_parse_command_output_ignores_noise() -> None:
    text = 'not json\n{"a": 1, "b": "x", "c": true}\n[1, 2]\n{"a": 2.5, "d": NaN}\n{broken\n'
    assert parse_command_output(text) == {"a": [1.0, 2.5]}


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"command": "echo hi; rm -rf /", "kpis": ["x"]}, "argv list"),
        ({"command": [], "kpis": ["x"]}, "argv list"),
        ({"command": ["prog", 3], "kpis": ["x"]}, "string"),
        ({"command": ["prog"]}, "kpis"),
        ({"command": ["prog"], "kpis": ["Bad-Name"]}, "KPI name"),
        (
            {"command": ["prog"], "kpis": ["x"], "knobs": {"k": {"type": "int", "low": 1, "high": 9}}},
            "default",
        ),
        (
            {
                "command": ["prog"],
                "kpis": ["x"],
                "knobs": {"k": {"path": "proc/sys/vm/swappiness", "type": "int", "low": 0, "high": 9}},
            },
            "process",
        ),
        ({"commands": ["prog"]}, "unknown option"),
    ],
)
def test_bad_options_are_refused(tmp_path: Path, options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(DomainError, match=fragment):
        make(tmp_path, options)
