"""logs.setup_logging: journald priority lines when stderr is the journal stream, readable lines elsewhere,
and a log file only when one is named. Each case runs in a child process of its own (its stderr a file
or a pipe, its environment chosen), as systemd would start the daemon."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kloros_orchestrator.logs import setup_logging, stderr_is_journal, syslog_priority

# The child: setup_logging, then one record per level (a second line in each) and a traceback.
_CHILD = r"""
import os, sys
from pathlib import Path
from loguru import logger
from kloros_orchestrator.logs import setup_logging

if sys.argv[1] == "self":  # stderr is a pipe: name it as systemd would
    st = os.fstat(2)
    os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
setup_logging("trace", log_file=Path(sys.argv[2]) if sys.argv[2] else None)
for level in ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"):
    logger.log(level, "at " + level.lower() + "\nsecond line of " + level.lower())
try:
    {}["missing"]
except KeyError:
    logger.exception("the lookup failed")
"""

_LEVELS = {"trace": 7, "debug": 7, "info": 6, "success": 6, "warning": 4, "error": 3, "critical": 2}
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ")


def _child_env(journal_stream: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    return env


def _run(tmp_path: Path, journal_stream: str | None, *, log_file: Path | None = None) -> list[str]:
    """Run the child with stderr on a file; ``journal_stream``: "match" names that file."""
    err_path = tmp_path / "stderr"
    with err_path.open("wb") as err:
        if journal_stream == "match":
            st = os.fstat(err.fileno())
            journal_stream = f"{st.st_dev}:{st.st_ino}"
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, "env", str(log_file or "")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=_child_env(journal_stream),
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, err_path.read_text()
    assert done.stdout == b""
    return err_path.read_text().splitlines()


def _assert_journal_lines(lines: list[str]) -> None:
    for name, priority in _LEVELS.items():
        assert f"<{priority}>at {name}" in lines
        assert f"<{priority}>second line of {name}" in lines  # every line of a message is prefixed
    assert all(re.match(r"<[0-7]>", line) for line in lines), lines
    assert not any(_TIMESTAMP.search(line) for line in lines)  # the journal stamps records itself
    start = lines.index("<3>the lookup failed")
    traceback = lines[start + 1 :]
    assert traceback[0] == "<3>Traceback (most recent call last):"
    assert traceback[-1] == "<3>KeyError: 'missing'"
    assert all(line.startswith("<3>") for line in traceback)


def test_journal_stream_on_stderr_gives_priority_lines(tmp_path: Path) -> None:
    lines = _run(tmp_path, "match")
    _assert_journal_lines(lines)
    print("\n".join(lines))  # what journald reads (pytest -s shows it): `journalctl -p err` finds <3>, <2>


def test_journal_stream_on_a_pipe_named_by_the_child(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, "self", ""],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=_child_env(None),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    _assert_journal_lines(done.stderr.decode().splitlines())


@pytest.mark.parametrize("journal_stream", [None, "mismatch", "garbage", ""])
def test_elsewhere_lines_stay_readable(tmp_path: Path, journal_stream: str | None) -> None:
    if journal_stream == "mismatch":  # inherited by a process whose stderr was redirected elsewhere
        st = os.stat(tmp_path)
        journal_stream = f"{st.st_dev}:{st.st_ino}"
    elif journal_stream == "garbage":
        journal_stream = "12:x:7"
    lines = _run(tmp_path, journal_stream)
    assert not any(re.match(r"<\d>", line) for line in lines)
    for name in _LEVELS:
        assert any(_TIMESTAMP.match(line) and line.endswith(f" at {name}") for line in lines), name
        assert f"second line of {name}" in lines
    assert re.fullmatch(
        _TIMESTAMP.pattern + r"ERROR +the lookup failed",
        lines[lines.index("Traceback (most recent call last):") - 1],
    )
    assert lines[-1] == "KeyError: 'missing'"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stderr"]  # one stream: no file unless named


def test_log_file_is_a_second_sink(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "daemon.log"  # its directory is created
    lines = _run(tmp_path, "match", log_file=log_file)
    _assert_journal_lines(lines)  # stderr unchanged
    written = log_file.read_text().splitlines()
    for name in _LEVELS:
        assert any(line.endswith(f" - at {name}") and f"| {name.upper()}" in line for line in written), name
    assert written[-1] == "KeyError: 'missing'"
    assert not any(line.startswith("<") for line in written)  # priorities belong to the journal stream
    assert (log_file.stat().st_mode & 0o022) == 0


def test_log_file_refuses_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("")
    log_file = tmp_path / "daemon.log"
    log_file.symlink_to(victim)
    with pytest.raises(OSError):
        setup_logging("info", log_file=log_file)  # raises before loguru is given the file
    assert victim.read_text() == ""


def test_an_unknown_level_is_refused_before_any_sink_changes() -> None:
    with pytest.raises(ValueError):
        setup_logging("loud", log_file=None)


def test_stderr_is_journal_compares_device_and_inode(tmp_path: Path) -> None:
    with (tmp_path / "f").open("w") as f:
        st = os.fstat(f.fileno())
        fd = f.fileno()
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fd)
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, fd)
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev + 1}:{st.st_ino}"}, fd)
        for bad in ("", ":", f"{st.st_dev}", f"{st.st_dev}:", f"-1:{st.st_ino}", f" {st.st_dev}:{st.st_ino}"):
            assert not stderr_is_journal({"JOURNAL_STREAM": bad}, fd), bad
        assert not stderr_is_journal({}, fd)
    assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fd)  # closed


def test_syslog_priorities_of_loguru_levels() -> None:
    from loguru import logger

    numbers = {name: logger.level(name.upper()).no for name in _LEVELS}
    assert {name: syslog_priority(no) for name, no in numbers.items()} == _LEVELS
    assert syslog_priority(45) == 3 and syslog_priority(60) == 2 and syslog_priority(0) == 7
