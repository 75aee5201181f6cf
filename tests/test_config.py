from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kloros_orchestrator.cli import main
from kloros_orchestrator.config import defaults_dir, load_config, parse_duration
from kloros_orchestrator.errors import ConfigError
from kloros_orchestrator.model import REGIMES


def write(tmp_path: Path, cfg: object, name: str = "dream.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return exc.value.problems


def test_embedded_default_loads_with_every_default_domain() -> None:
    loaded = load_config(None)
    assert loaded.path is None
    assert loaded.config.dream.domains == ["cpu", "memory", "storage", "os_scheduler"]
    for dom in loaded.config.dream.domains:
        assert set(loaded.regimes[dom]) == set(REGIMES)
    assert loaded.window_duration_s == 4 * 3600
    assert loaded.state_dir == Path.cwd() / "var"  # absolute: trials run in their own cwd


def test_default_regimes_and_caps_exist_for_every_registered_domain() -> None:
    from kloros_orchestrator.spica.registry import available_domains

    for dom in available_domains():
        if dom == "generic":
            continue
        assert (defaults_dir() / "regimes" / f"{dom}.yaml").is_file(), dom
        assert (defaults_dir() / "caps" / f"{dom}.yaml").is_file(), dom


def test_every_problem_is_reported_at_once_with_file_and_key(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        {
            "seed": "seven",
            "bogus": 1,
            "dream": {"trials": -1, "population": 0, "domains": ["cpu", "nonsense"], "extra": True},
            "phase": {"window": {"start": "25:00", "duration": "abc"}, "qtime": {"epochs": 0}},
        },
    )
    probs = problems_of(p)
    text = "\n".join(probs)
    assert f"{p}: seed: Expected `int`, got `str`" in probs
    assert f"{p}: bogus: unknown key" in probs
    assert f"{p}: dream.extra: unknown key" in probs
    # Range, time and domain problems of the keys that did parse show in the same pass.
    for key in ("dream.trials", "dream.population", "phase.window.start", "phase.window.duration"):
        assert f"{p}: {key}:" in text, key
    assert f"{p}: dream.domains: unknown domain 'nonsense'" in text
    p2 = write(
        tmp_path,
        {
            "dream": {"trials": -1, "population": 0, "domains": ["cpu", "nonsense"]},
            "phase": {"window": {"start": "25:00", "duration": "abc"}, "qtime": {"epochs": 0}},
        },
        "d2.yaml",
    )
    text = "\n".join(problems_of(p2))
    for key in (
        "dream.trials",
        "dream.population",
        "phase.window.start",
        "phase.window.duration",
        "phase.qtime.epochs",
        "dream.domains",
    ):
        assert f"{p2}: {key}:" in text, key


def test_unknown_cap_kpi_and_missing_regime_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "regimes").mkdir()
    (tmp_path / "caps").mkdir()
    regimes = yaml.safe_load((defaults_dir() / "regimes" / "cpu.yaml").read_text())
    del regimes["mixed"]
    (tmp_path / "regimes" / "cpu.yaml").write_text(yaml.safe_dump(regimes))
    (tmp_path / "caps" / "cpu.yaml").write_text("not_a_kpi: 3\n")
    p = write(tmp_path, {"dream": {"domains": ["cpu"]}})
    text = "\n".join(problems_of(p))
    assert "mixed: regime missing" in text
    assert "not_a_kpi" in text


def test_env_override_of_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, {"dream": {"domains": ["cpu"], "trials": 2}})
    monkeypatch.setenv("KLR_DREAM_TRIALS", "5")
    assert load_config(p).config.dream.trials == 5
    monkeypatch.setenv("KLR_DREAM_TRIALS", "x")
    assert any("KLR_DREAM_TRIALS" in s for s in problems_of(p))


def test_min_trials_above_trials_is_allowed_and_effective_min_is_clamped(tmp_path: Path) -> None:
    # The contract's minimal configs set trials: 1 without min_trials; that must load.
    p = write(tmp_path, {"dream": {"domains": ["cpu"], "trials": 1}})
    assert load_config(p).config.dream.trials == 1


@pytest.mark.parametrize(
    ("text", "seconds"), [("4h", 14400), ("30m", 1800), ("1h30m", 5400), (90, 90), ("90s", 90), (2.5, 2.5)]
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "abc", "-5", 0, -1, "h", True])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)  # type: ignore[arg-type]


def test_cli_validate_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 0
    bad = write(tmp_path, {"dream": {"trials": -1}})
    assert main(["validate", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: dream.trials:" in err
    junk = tmp_path / "junk.yaml"
    junk.write_text("dream: [unclosed\n")
    assert main(["validate", "--config", str(junk)]) == 2
    assert "invalid YAML" in capsys.readouterr().err
    assert main(["run", "--config", str(bad)]) == 2


def test_cli_status_without_daemon_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--socket", str(tmp_path / "none.sock")]) == 1
    assert "no daemon is listening" in capsys.readouterr().err


def test_run_without_stress_ng_exits_3_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path, {"state_dir": str(tmp_path / "state"), "dream": {"domains": ["cpu"]}})
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert main(["run", "--config", str(cfg)]) == 3
    assert "apt-get update && apt-get install -y stress-ng" in capsys.readouterr().err


def test_options_and_durations_run_would_refuse_are_validate_errors(tmp_path: Path) -> None:
    p = write(tmp_path, {
        "dream": {"domains": ["cpu"]},
        "phase": {"window": {"duration": "25h"}},
        "domain_options": {"cpu": {"bogus": 1}, "nonsense": {}},
    })
    text = "\n".join(problems_of(p))
    assert f"{p}: phase.window.duration: at most 24h" in text
    assert f"{p}: domain_options.cpu.bogus: unknown option" in text
    assert f"{p}: domain_options.nonsense: unknown domain" in text


def test_generic_int_knob_with_fractional_bounds_is_a_config_error(tmp_path: Path) -> None:
    # validate used to accept it and `run` then died building the search space (exit 1, traceback).
    cfg = {
        "state_dir": str(tmp_path / "s"),
        "dream": {"domains": ["fracbounds"]},
        "domain_options": {
            "fracbounds": {
                "kind": "generic",
                "knobs": {"level": {"type": "int", "low": 1.5, "high": 10, "scope": "process", "default": 2}},
            }
        },
    }
    found = problems_of(write(tmp_path, cfg))
    assert any("domain_options.fracbounds" in p and "whole-number bounds" in p for p in found), found
