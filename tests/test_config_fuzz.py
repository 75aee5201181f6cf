"""Whatever a configuration file holds, loading it ends in a LoadedConfig or a ConfigError.

Three kinds of input go to ``load_config`` through a real file: YAML-ish text assembled from tokens
that reach the loader's corners (anchors, aliases, tags, deep brackets, special floats, escapes),
raw bytes, and random structures dumped as YAML under the keys the configuration knows. Each lands in
``dream.yaml``, ``regimes/cpu.yaml`` or ``caps/cpu.yaml``. ``KLR_CONFIG_FUZZ_EXAMPLES`` sets how many
inputs each test tries (a longer local run: ``KLR_CONFIG_FUZZ_EXAMPLES=5000``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kloros_orchestrator.config import defaults_dir, load_config
from kloros_orchestrator.errors import ConfigError
from kloros_orchestrator.spica.registry import available_domains, unregister

EXAMPLES = int(os.environ.get("KLR_CONFIG_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
TARGETS = ("dream.yaml", "regimes/cpu.yaml", "caps/cpu.yaml")

_TOKENS = [
    "\n", "  ", "- ", ": ", ", ", "[", "]", "{", "}", "&a ", "*a", "&b ", "*b", "<<: ", "? ", "!!binary ",
    "!!set ", "!!omap ", "!!timestamp ", "!!str ", "!!int ", "!!float ", "!!python/name:os.system ", "|",
    ">", "'", '"', "#", "%YAML 1.1\n", "---\n", "...\n", "~", ".inf", "-.inf", ".nan", "1e30",
    "1.0e+30", "9" * 400, "0x" + "f" * 40, "1:2:3", "2024-13-45", "2024-01-01 10:00:00", "-3", "0",
    "\\0", "\\x01", "\\udc80", "\\U0010ffff", "\t", "\x85", "\u2028", "\ufeff", "{x}", "a b",
]  # fmt: skip
_WORDS = [
    "state_dir", "socket", "sysfs_root", "seed", "dream", "population", "trials", "min_trials",
    "epochs_per_cycle", "trial_seconds", "phase", "window", "start", "duration", "qtime", "epochs",
    "replicas", "bootstrap_samples", "domains", "cpu", "domain_options", "kind", "generic", "knobs",
    "path", "idle", "normal", "stress", "mixed", "stressors", "name", "instances", "options",
    "temp_c", "max", "min", "now+5", "25:99", "4h", "low", "high", "type", "int", "workload", "command",
    "kpis", "mine", "choices",
]  # fmt: skip

yaml_ish = st.lists(st.sampled_from(_TOKENS + _WORDS), max_size=60).map("".join)

_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "a\0b", "/tmp/x y", "st{x}", "now+1e300", "25:99", "1e30", "x" * 300, "sd\udc80"]),
)
_key = st.one_of(st.sampled_from(_WORDS), st.text(max_size=10), st.integers(), st.booleans())
structures = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_key, inner, max_size=5),
    max_leaves=30,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "regimes").mkdir()
    (root / "caps").mkdir()
    return root


@pytest.fixture(autouse=True)
def _restore_registry() -> Iterator[None]:
    before = set(available_domains())
    yield
    for name in set(available_domains()) - before:  # generic domains a fuzzed file defined
        unregister(name)


def survives(root: Path, target: str, data: bytes) -> None:
    """Write ``data`` to ``target`` next to sane other files; loading must not raise anything else."""
    regimes = (defaults_dir() / "regimes" / "cpu.yaml").read_bytes()
    (root / "regimes" / "cpu.yaml").write_bytes(regimes)
    (root / "regimes" / "mine.yaml").write_bytes(regimes)
    (root / "caps" / "cpu.yaml").write_bytes(b"temp_c: 90\n")
    (root / "dream.yaml").write_bytes(b"dream: {domains: [cpu]}\nstate_dir: /tmp/klr-fuzz\n")
    (root / target).write_bytes(data)
    before = set(available_domains())
    try:
        load_config(root / "dream.yaml")
        event("loaded")
    except ConfigError as e:
        event("refused")
        assert e.problems, "a ConfigError names at least one problem"
        assert all(len(p) <= 500 for p in e.problems)
    finally:
        for name in set(available_domains()) - before:
            unregister(name)


@FUZZ
@given(text=yaml_ish, target=st.sampled_from(TARGETS))
def test_yaml_ish_text_loads_or_is_a_config_error(workdir: Path, text: str, target: str) -> None:
    survives(workdir, target, text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(data=st.binary(max_size=200), target=st.sampled_from(TARGETS))
def test_raw_bytes_load_or_are_a_config_error(workdir: Path, data: bytes, target: str) -> None:
    survives(workdir, target, data)


def _config_shaped(top: dict[Any, Any]) -> dict[Any, Any]:
    return {"dream": {"domains": ["cpu"]}, "state_dir": "/tmp/klr-fuzz", **top}


_config_keys = st.sampled_from(
    ["state_dir", "socket", "seed", "sysfs_root", "timezone", "log_level", "regimes_dir", "caps_dir",
     "bootstrap_samples", "dream", "phase", "domain_options"]
)  # fmt: skip
_section = st.fixed_dictionaries(
    {},
    optional={
        "dream": st.dictionaries(_key, structures, max_size=6),
        "phase": st.fixed_dictionaries(
            {}, optional={"window": st.dictionaries(st.sampled_from(["start", "duration"]), _leaf),
                          "qtime": st.dictionaries(st.sampled_from(["epochs", "replicas", "slices"]), _leaf)}
        ),
        "domain_options": st.dictionaries(st.sampled_from(["cpu", "mine", "storage"]), structures),
    },
)  # fmt: skip
_knob = st.fixed_dictionaries(
    {"type": st.sampled_from(["int", "float", "choice", "bool"]) | _leaf},
    optional={"low": _leaf, "high": _leaf, "path": _leaf | st.just("proc/sys/vm/swappiness"),
              "choices": structures, "default": _leaf, "scope": _leaf, "env": _leaf, "format": _leaf},
)
_generic = st.fixed_dictionaries(
    {"kind": st.just("generic")},
    optional={"knobs": st.dictionaries(_key, _knob, max_size=3) | structures,
              "workload": st.just("stressors") | st.fixed_dictionaries({"command": structures}) | _leaf,
              "kpis": structures, "description": _leaf},
).map(lambda opts: {"dream": {"domains": ["cpu", "mine"]}, "domain_options": {"mine": opts}})


@FUZZ
@given(
    target=st.sampled_from(TARGETS),
    doc=st.one_of(
        structures,
        _section.map(_config_shaped),
        st.dictionaries(_config_keys, structures, max_size=6).map(_config_shaped),
        _generic.map(_config_shaped),
    ),
)
def test_random_structures_load_or_are_a_config_error(workdir: Path, target: str, doc: object) -> None:
    # ASCII output: every non-ASCII character, lone surrogates included, becomes a YAML escape.
    survives(workdir, target, yaml.safe_dump(doc).encode())
