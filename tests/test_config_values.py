"""Values that parse but make no sense: each refused as ``file: key: problem`` with the key named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kloros_orchestrator.config import defaults_dir, load_config
from kloros_orchestrator.config_checks import COUNT_BOUNDS
from kloros_orchestrator.errors import ConfigError
from kloros_orchestrator.spica.registry import available_domains, unregister

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cfgdir(tmp_path: Path) -> Path:
    (tmp_path / "regimes").mkdir()
    (tmp_path / "caps").mkdir()
    regimes = (defaults_dir() / "regimes" / "cpu.yaml").read_bytes()
    (tmp_path / "regimes" / "cpu.yaml").write_bytes(regimes)
    (tmp_path / "regimes" / "mine.yaml").write_bytes(regimes)
    return tmp_path


def nested(dotted: str, value: Any) -> dict[str, Any]:
    *parents, leaf = dotted.split(".")
    doc: dict[str, Any] = {leaf: value}
    for p in reversed(parents):
        doc = {p: doc}
    return doc


def merged(*docs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for doc in docs:
        for key, value in doc.items():
            out[key] = merged(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def problems_of(cfgdir: Path, doc: dict[str, Any], name: str = "dream.yaml") -> list[str]:
    base = {"dream": {"domains": ["cpu"]}, "state_dir": str(cfgdir / "state")}
    (cfgdir / "dream.yaml").write_text(yaml.safe_dump(base))
    (cfgdir / name).write_text(yaml.safe_dump(merged(base, doc) if name == "dream.yaml" else doc))
    before = set(available_domains())
    try:
        with pytest.raises(ConfigError) as exc:
            load_config(cfgdir / "dream.yaml")
    finally:
        for added in set(available_domains()) - before:
            unregister(added)
    return exc.value.problems


def has(problems: list[str], prefix: str, *words: str) -> bool:
    return any(p.startswith(prefix) and all(w in p for w in words) for p in problems)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("dream.trial_seconds", float("inf"), ("finite", "inf")),
        ("phase.trial_seconds", float("nan"), ("finite", "nan")),
        ("dream.pacing.max_sleep_s", float("inf"), ("finite",)),
        ("dream.pacing.min_sleep_s", float("nan"), ("finite",)),
        ("phase.window.duration", float("nan"), ("finite", "nan")),
        ("phase.window.duration", float("inf"), ("finite", "inf")),
    ],
)
def test_inf_and_nan_are_refused(cfgdir: Path, key: str, value: float, words: tuple[str, ...]) -> None:
    path = cfgdir / "dream.yaml"
    assert has(problems_of(cfgdir, nested(key, value)), f"{path}: {key}: ", *words)


@pytest.mark.parametrize(
    "key",
    ["dream.epochs_per_cycle", "dream.min_trials", "dream.trials", "dream.population", "dream.max_parallel",
     "phase.qtime.epochs", "phase.qtime.replicas", "phase.max_variants", "bootstrap_samples"],
)  # fmt: skip
def test_counts_of_10_to_the_30_are_refused_with_the_bound(cfgdir: Path, key: str) -> None:
    problems = problems_of(cfgdir, nested(key, 10**30))
    high = COUNT_BOUNDS[key][1]
    assert f"{cfgdir / 'dream.yaml'}: {key}: at most {high}, got an integer of 31 digits" in problems


@pytest.mark.parametrize("key", ["dream.trial_seconds", "phase.trial_seconds"])
def test_trial_seconds_beyond_a_day_are_refused(cfgdir: Path, key: str) -> None:
    problems = problems_of(cfgdir, nested(key, 1e30))
    assert f"{cfgdir / 'dream.yaml'}: {key}: at most 86400 s (one day), got 1e+30" in problems
    assert load_config_ok(cfgdir, nested(key, 86400))


def load_config_ok(cfgdir: Path, doc: dict[str, Any]) -> bool:
    path = cfgdir / "dream.yaml"
    path.write_text(yaml.safe_dump(merged({"dream": {"domains": ["cpu"]}, "state_dir": str(cfgdir)}, doc)))
    return load_config(path) is not None


def test_integers_beyond_float_range_name_their_key(cfgdir: Path) -> None:
    huge = 10**400
    path = cfgdir / "dream.yaml"
    problems = problems_of(cfgdir, {"dream": {"trial_seconds": huge, "population": huge}})
    assert f"{path}: dream.trial_seconds: Number out of range" in problems
    assert f"{path}: dream.population: at most 1000, got an integer of 401 digits" in problems
    caps = problems_of(cfgdir, {"temp_c": huge, "watts": {"max": -huge}}, "caps/cpu.yaml")
    at = f"{cfgdir / 'caps' / 'cpu.yaml'}:"
    assert caps == [
        f"{at} temp_c: integer out of range (64 bits), got an integer of 401 digits",
        f"{at} watts.max: integer out of range (64 bits), got -an integer of 401 digits",
    ]


def test_regime_values_are_finite_bounded_and_single_arguments(cfgdir: Path) -> None:
    regimes = yaml.safe_load((defaults_dir() / "regimes" / "cpu.yaml").read_text())
    regimes["idle"]["duration"] = float("inf")
    regimes["normal"]["duration"] = 10**30
    regimes["stress"]["stressors"][0]["instances"] = 10**30
    regimes["mixed"]["stressors"][0]["options"] = {"cpu-load": float("nan"), "cpu-method": "a b", "x": "-q"}
    problems = problems_of(cfgdir, regimes, "regimes/cpu.yaml")
    file = cfgdir / "regimes" / "cpu.yaml"
    assert problems == [
        f"{file}: idle.duration: must be a finite number > 0, got inf",
        f"{file}: normal.duration: at most 86400 s (one day), got 1e+30",
        f"{file}: stress.stressors[0].instances: a count from 0 to 4096, got an integer of 31 digits",
        f"{file}: mixed.stressors[0].options.cpu-load: must be a finite number, got nan",
        f"{file}: mixed.stressors[0].options.cpu-method: must be one argument without whitespace or "
        "control characters, got 'a b'",
        f"{file}: mixed.stressors[0].options.x: must not start with '-', got '-q'",
    ]


@pytest.mark.parametrize("key", ["state_dir", "socket", "sysfs_root", "regimes_dir", "caps_dir"])
def test_nul_in_a_path_key_is_refused(cfgdir: Path, key: str) -> None:
    problems = problems_of(cfgdir, {key: "/tmp/a\0b"})
    assert f"{cfgdir / 'dream.yaml'}: {key}: contains a control character (NUL at position 6)" in problems


def test_a_path_component_beyond_name_max_is_refused(cfgdir: Path) -> None:
    problems = problems_of(cfgdir, {"sysfs_root": "/tmp/" + "x" * 300})
    assert f"{cfgdir / 'dream.yaml'}: sysfs_root: has a component longer than 255 bytes" in problems


def test_control_characters_and_nul_in_domain_options_are_refused(cfgdir: Path) -> None:
    knobs = {"swap": {"type": "int", "low": 0, "high": 100, "path": "proc/sys/vm/swap\0piness"},
             "other": {"type": "int", "low": 0, "high": 10**30, "path": "proc/sys/vm/a\nb"}}  # fmt: skip
    options = {"mine": {"kind": "generic", "knobs": knobs}, "storage": {"device": "sd\0a"}}
    problems = problems_of(cfgdir, {"dream": {"domains": ["cpu", "mine"]}, "domain_options": options})
    at = f"{cfgdir / 'dream.yaml'}: domain_options."
    assert problems == [  # keys in file order; safe_dump sorts them
        f"{at}mine.knobs.other.high: integer out of range (64 bits), got an integer of 31 digits",
        f"{at}mine.knobs.other.path: contains a control character (U+000A at position 13)",
        f"{at}mine.knobs.swap.path: contains a NUL character at position 16",
        f"{at}storage.device: contains a NUL character at position 2",
    ]


def test_generic_options_of_an_unexpected_shape_are_a_problem(cfgdir: Path) -> None:
    mine = {"kind": "generic", "kpis": {"score": []}, "workload": {"command": ["/bin/true"]}}
    problems = problems_of(cfgdir, {"dream": {"domains": ["cpu", "mine"]}, "domain_options": {"mine": mine}})
    assert problems == [f"{cfgdir / 'dream.yaml'}: domain_options.mine: options of an unexpected shape "
                        "(unhashable type: 'list')"]  # fmt: skip


@pytest.mark.parametrize(
    ("state_dir", "reason"),
    [
        ("/tmp/my state", "contains whitespace: stress-ng gets a directory under it as --temp-path"),
        ("/tmp/st{x}", "contains '{' or '}': the log file path under it would be read as a format template"),
        ("/tmp/{time}", "contains '{' or '}'"),
    ],
)
def test_a_state_dir_a_consumer_would_mishandle_is_refused(cfgdir: Path, state_dir: str, reason: str) -> None:
    assert has(problems_of(cfgdir, {"state_dir": state_dir}), f"{cfgdir / 'dream.yaml'}: state_dir: {reason}")


def test_a_relative_state_dir_is_checked_where_it_resolves(
    cfgdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spaced = cfgdir / "a dir"
    spaced.mkdir()
    monkeypatch.chdir(spaced)
    problems = problems_of(cfgdir, {"state_dir": "./var"})
    assert has(problems, f"{cfgdir / 'dream.yaml'}: state_dir: contains whitespace (it resolves to ")


def test_socket_paths_are_checked_for_length_including_the_default(cfgdir: Path) -> None:
    deep = "/tmp/" + "d" * 100
    problems = problems_of(cfgdir, {"state_dir": deep})
    assert has(problems, f"{cfgdir / 'dream.yaml'}: socket: default path is ", "set a shorter socket")
    assert load_config_ok(cfgdir, {"state_dir": deep, "socket": "/tmp/k.sock"})


def test_a_huge_value_is_rendered_truncated(cfgdir: Path) -> None:
    big = "x" * 20_000  # six of them stay below the file size cap
    doc = {big: 1, "log_level": big, "timezone": big, "dream": {"domains": [big]},
           "phase": {"window": {"start": big, "duration": big}}}  # fmt: skip
    problems = problems_of(cfgdir, doc)
    path = cfgdir / "dream.yaml"
    for key in ("log_level", "timezone", "phase.window.start", "phase.window.duration", "dream.domains"):
        assert has(problems, f"{path}: {key}: "), key
    assert has(problems, f"{path}: 'xxxxxxx", "...", "': unknown key")
    # The value is cut to 80 characters; the rest of a line is the file, the key and the explanation.
    assert all(p.count("x" * 10) <= 8 for p in problems), problems
    caps = problems_of(cfgdir, {"temp_c": big, big: 1}, "caps/cpu.yaml")
    assert len(caps) == 2 and all(p.count("x" * 10) <= 8 for p in caps), caps


def test_every_problem_is_listed_alongside_unknown_keys(cfgdir: Path) -> None:
    path = cfgdir / "dream.yaml"
    path.write_text(
        f"bogus: 1\nstate_dir: {cfgdir}\ndream:\n  domains: [cpu]\n  population: -3\n"
        'phase:\n  window:\n    start: "25:99"\n'
    )
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.problems == [
        f"{path}: bogus: unknown key",
        f"{path}: dream.population: must be > 0, got -3",
        f"{path}: phase.window.start: '25:99' is not a time of day: hours run 00-23 and minutes 00-59",
    ]


def test_range_problems_are_listed_alongside_type_problems(cfgdir: Path) -> None:
    doc = {"seed": "seven", "dream": {"elite": 9, "population": "six", "trials": 0},
           "phase": {"qtime": {"replicas": 2, "min_replicas": 3},
                     "window": {"start": "now+999999999"}}}  # fmt: skip
    problems = problems_of(cfgdir, doc)
    path = cfgdir / "dream.yaml"
    assert f"{path}: seed: Expected `int`, got `str`" in problems
    assert f"{path}: dream.population: Expected `int`, got `str`" in problems
    assert f"{path}: dream.trials: must be > 0, got 0" in problems
    assert f"{path}: phase.qtime.min_replicas: exceeds phase.qtime.replicas" in problems
    assert has(problems, f"{path}: phase.window.start: at most now+604800 (7 days)")
    # elite is compared with a population only when the population itself parsed.
    assert not has(problems, f"{path}: dream.elite:")


def test_a_negative_seed_is_refused(cfgdir: Path) -> None:
    # numpy refuses negative seed entropy: PHASE would fail when it plans the window.
    assert f"{cfgdir / 'dream.yaml'}: seed: must be ≥ 0, got -1" in problems_of(cfgdir, {"seed": -1})


def test_overrides_under_a_key_that_is_no_mapping_are_reported_not_raised(cfgdir: Path) -> None:
    path = cfgdir / "dream.yaml"
    path.write_text("dream: [cpu]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, overrides={"dream.epochs_per_cycle": 3, "state_dir": str(cfgdir)})
    assert exc.value.problems == [f"{path}: dream: expected a mapping, got list"]


def test_shipped_configurations_still_validate() -> None:
    assert load_config(None).config.dream.population == 6
    deploy = ROOT / "deploy" / "dream.yaml"
    if deploy.is_file():
        load_config(deploy)


def test_cli_validate_lists_value_problems_and_exits_2(cfgdir: Path) -> None:
    path = cfgdir / "dream.yaml"
    path.write_text('dream: {domains: [cpu], trial_seconds: .inf}\nstate_dir: "/tmp/a\\0b"\n')
    done = subprocess.run(
        [sys.executable, "-m", "kloros_orchestrator", "validate", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"{path}: dream.trial_seconds: must be a finite number of seconds, got inf" in done.stderr
    assert f"{path}: state_dir: contains a control character (NUL at position 6)" in done.stderr


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("dream.racing.indifference", 0.0, ("must be in (0, 10]", "got 0")),
        ("dream.racing.indifference", float("nan"), ("finite",)),
        ("dream.racing.confidence", 1.0, ("must be in (0.5, 1)", "got 1")),
        ("dream.racing.confidence", 0.5, ("must be in (0.5, 1)",)),
        ("dream.contamination.outside_cpu", 1.5, ("must be in (0, 1]", "got 1.5")),
        ("dream.contamination.outside_cpu", float("-inf"), ("finite",)),
    ],
)
def test_shares_and_probabilities_outside_their_range_are_refused(
    cfgdir: Path, key: str, value: float, words: tuple[str, ...]
) -> None:
    assert has(problems_of(cfgdir, nested(key, value)), f"{cfgdir / 'dream.yaml'}: {key}: ", *words)


def test_racing_and_contamination_defaults_and_limits_load(cfgdir: Path) -> None:
    path = cfgdir / "dream.yaml"
    path.write_text(yaml.safe_dump({"dream": {"domains": ["cpu"]}, "state_dir": str(cfgdir)}))
    dream = load_config(path).config.dream
    assert (dream.racing.indifference, dream.racing.confidence) == (0.02, 0.95)
    assert (dream.contamination.outside_cpu, dream.contamination.max_reruns) == (0.10, 3)
    racing = {"indifference": 10, "confidence": 0.999}
    doc = {"dream": {"racing": racing, "contamination": {"outside_cpu": 1}}}
    assert load_config_ok(cfgdir, doc)
