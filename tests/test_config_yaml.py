"""Hostile files: every one a ``file: where: problem`` ConfigError, in dream.yaml, regimes and caps alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kloros_orchestrator.config import defaults_dir, load_config
from kloros_orchestrator.config_yaml import MAX_DEPTH, MAX_FILE_BYTES, read_yaml
from kloros_orchestrator.errors import ConfigError

# Nine levels of nine aliases: 9**9 (387 million) strings once expanded, in 300 bytes.
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
DEEP = "[" * 20_000 + "]" * 20_000 + "\n"
FILES = ("dream.yaml", "regimes/cpu.yaml", "caps/cpu.yaml")


@pytest.fixture
def cfgdir(tmp_path: Path) -> Path:
    """A valid configuration with its own regimes and caps for cpu."""
    (tmp_path / "regimes").mkdir()
    (tmp_path / "caps").mkdir()
    (tmp_path / "regimes" / "cpu.yaml").write_bytes((defaults_dir() / "regimes" / "cpu.yaml").read_bytes())
    (tmp_path / "caps" / "cpu.yaml").write_text("temp_c: 90\n")
    (tmp_path / "dream.yaml").write_text(f"dream: {{domains: [cpu]}}\nstate_dir: {tmp_path / 'state'}\n")
    load_config(tmp_path / "dream.yaml")
    return tmp_path


def problems_with(cfgdir: Path, name: str, data: bytes | str) -> list[str]:
    target = cfgdir / name
    if isinstance(data, str):
        target.write_text(data)
    else:
        target.write_bytes(data)
    with pytest.raises(ConfigError) as exc:
        load_config(cfgdir / "dream.yaml")
    return exc.value.problems


@pytest.mark.parametrize("name", FILES)
def test_an_alias_bomb_is_refused_before_it_expands(cfgdir: Path, name: str) -> None:
    problems = problems_with(cfgdir, name, ALIAS_BOMB)
    prefix = f"{cfgdir / name}: line "
    assert any(p.startswith(prefix) and "aliases expand the document beyond" in p for p in problems), problems


def test_small_anchors_and_aliases_still_work(cfgdir: Path) -> None:
    regimes = yaml.safe_load((cfgdir / "regimes" / "cpu.yaml").read_text())
    text = "base: &base " + yaml.safe_dump(regimes["idle"], default_flow_style=True)
    text += "".join(f"{name}: *base\n" for name in ("idle", "normal", "stress", "mixed"))
    (cfgdir / "regimes" / "cpu.yaml").write_text(text)
    with pytest.raises(ConfigError) as exc:  # the extra "base" key is the only problem
        load_config(cfgdir / "dream.yaml")
    assert exc.value.problems == [f"{cfgdir / 'regimes' / 'cpu.yaml'}: base: unknown regime (expected idle, "
                                  "normal, stress, mixed)"]  # fmt: skip


def test_an_alias_to_its_own_anchor_is_refused(cfgdir: Path) -> None:
    problems = problems_with(cfgdir, "dream.yaml", "dream: &d {domains: [cpu], pacing: *d}\n")
    assert problems == [f"{cfgdir / 'dream.yaml'}: line 1: invalid YAML: an alias refers to its own anchor"]


@pytest.mark.parametrize("name", FILES)
def test_nesting_20000_deep_is_refused_without_recursion_error(cfgdir: Path, name: str) -> None:
    problems = problems_with(cfgdir, name, "x: " + DEEP)
    assert problems == [f"{cfgdir / name}: line 1: invalid YAML: nested deeper than {MAX_DEPTH} levels"]


def test_nesting_through_aliases_counts_too(cfgdir: Path) -> None:
    level = "[" * 40 + "x" + "]" * 40
    text = f"a: &a {level}\nb: &b {level.replace('x', '*a')}\nc: {level.replace('x', '*b')}\n"
    problems = problems_with(cfgdir, "dream.yaml", text)
    assert problems[0].startswith(f"{cfgdir / 'dream.yaml'}: line 2: invalid YAML: aliases nest this value")


@pytest.mark.parametrize("name", FILES)
def test_bytes_that_are_not_utf8_are_a_problem(cfgdir: Path, name: str) -> None:
    problems = problems_with(cfgdir, name, b"temp_c: \xff\xfe90\n")
    assert problems == [f"{cfgdir / name}: (file): not UTF-8 text (byte 0xff at offset 8)"]


@pytest.mark.parametrize("name", FILES)
def test_control_characters_in_the_text_are_a_problem(cfgdir: Path, name: str) -> None:
    problems = problems_with(cfgdir, name, b"temp_c: 9\x000\n")
    reason = "special characters are not allowed (character #x0000 at offset 9)"
    assert problems == [f"{cfgdir / name}: (file): not YAML text: {reason}"]


def test_a_file_above_the_size_cap_is_not_read_whole(cfgdir: Path) -> None:
    problems = problems_with(cfgdir, "dream.yaml", "# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    assert problems == [f"{cfgdir / 'dream.yaml'}: (file): larger than {MAX_FILE_BYTES // 1024} KiB"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("x: " + "9" * 5000, "int literal longer than 1000 characters"),  # past int()'s digit limit
        ("x: 2024-13-45", "cannot read this value as timestamp: month must be in 1..12"),
        ("x: !!timestamp soon", "cannot read this value as timestamp: not a value of this type"),
        ("x: !!bool maybe", "cannot read this value as bool: not a value of this type"),
        ("x: !!python/name:os.system", "could not determine a constructor"),
        ('x: "sd\\udc80"', "a lone surrogate escape is not text"),
    ],
)
def test_scalars_python_cannot_build_are_located_problems(cfgdir: Path, text: str, problem: str) -> None:
    problems = problems_with(cfgdir, "dream.yaml", text + "\n")
    assert len(problems) == 1
    assert problems[0].startswith(f"{cfgdir / 'dream.yaml'}: line 1: invalid YAML: ")
    assert problem in problems[0]


def test_unreadable_paths_are_problems_not_exceptions(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.yaml", tmp_path / "a\0b.yaml"):
        with pytest.raises(ConfigError) as exc:
            read_yaml(path)
        assert exc.value.problems[0].startswith(f"{path}: (file): cannot read: ")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for path in (tmp_path, fifo):  # a FIFO would block the reader forever
        with pytest.raises(ConfigError) as exc:
            read_yaml(path)
        assert exc.value.problems == [f"{path}: (file): not a regular file"]


@pytest.mark.parametrize(
    ("name", "data"),
    [("dream.yaml", ALIAS_BOMB), ("dream.yaml", "x: " + DEEP), ("regimes/cpu.yaml", b"idle: \xc3\x28\n")],
)
def test_cli_validate_exits_2_without_a_traceback(cfgdir: Path, name: str, data: str | bytes) -> None:
    target = cfgdir / name
    target.write_bytes(data.encode() if isinstance(data, str) else data)
    done = subprocess.run(
        [sys.executable, "-m", "kloros_orchestrator", "validate", "--config", str(cfgdir / "dream.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{target}: " in done.stderr
