"""The daemon's log sinks: one stream on stderr, plus a file only when the configuration names one.

Under systemd, stderr is a stream to the journal and systemd says so in ``$JOURNAL_STREAM``
(``<st_dev>:<st_ino>`` of that stream, in decimal). When the variable names stderr itself, every line
starts with its sd-daemon priority ``<N>`` (``sd-daemon(3)``), so ``journalctl -p err`` finds the
errors, and carries no timestamp (the journal stamps each record). journald reads a stream line by
line, so every line of a multi-line message — each line of a traceback — carries the prefix.
Anywhere else (a terminal, a pipe, stderr redirected to a file inside a unit) the lines stay the
readable ``time level message`` ones.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message

READABLE_FORMAT: Final = "{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {message}"
JOURNAL_FORMAT: Final = "{message}"

# loguru level numbers (the lowest of each band) → syslog priorities (sd-daemon.h's SD_CRIT … SD_DEBUG).
_PRIORITIES: Final = ((50, 2), (40, 3), (30, 4), (20, 6))  # CRITICAL, ERROR, WARNING, SUCCESS/INFO
_DEBUG_PRIORITY: Final = 7  # DEBUG, TRACE


def syslog_priority(level_no: int) -> int:
    """The syslog priority of a loguru level number: CRITICAL 2, ERROR 3, WARNING 4, SUCCESS/INFO 6,
    DEBUG/TRACE 7 (a custom level takes the band it falls in)."""
    for lowest, priority in _PRIORITIES:
        if level_no >= lowest:
            return priority
    return _DEBUG_PRIORITY


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """Whether ``$JOURNAL_STREAM`` names ``fd`` (stderr): systemd connected it to the journal.

    A variable inherited by a process whose stderr goes elsewhere (redirected to a file, a pipe
    of a shell started from a unit) names another file and does not count; neither does a
    malformed one.
    """
    env = os.environ if environ is None else environ
    dev, sep, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalStream:
    """A loguru sink that writes each formatted record with ``<N>`` before every line of it."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, message: Message) -> None:
        prefix = f"<{syslog_priority(message.record['level'].no)}>"
        lines = str(message).splitlines() or [""]
        self._stream.write("".join(f"{prefix}{line}\n" for line in lines))  # one write: lines stay together
        self._stream.flush()


def setup_logging(level: str, *, log_file: Path | None) -> None:
    """Replace every loguru sink: stderr (journald priorities under systemd, else readable lines), and
    ``log_file`` when given (opened ``O_NOFOLLOW``, regular files only, rotated by size). No sink
    shows variables' values in a traceback (``diagnose=False``): they may hold secrets.

    ``level`` is a loguru level name in any case (``info``, ``DEBUG``, ...). Raises ``OSError`` when
    ``log_file`` cannot be opened and ``ValueError`` for an unknown level.
    """
    from kloros_orchestrator.safefs import LogFile, make_dirs

    level = level.upper()
    logger.level(level)  # ValueError for an unknown level, before any sink is removed
    logger.remove()
    if stderr_is_journal():
        logger.add(JournalStream(sys.stderr).write, level=level, format=JOURNAL_FORMAT, colorize=False,
                   diagnose=False)  # fmt: skip
    else:
        logger.add(sys.stderr, level=level, format=READABLE_FORMAT, diagnose=False)
    if log_file is not None:
        make_dirs(log_file.parent)
        # Opened here and handed over as an object: given a path, loguru would follow a planted
        # link and read braces in the path as a format string.
        logger.add(LogFile(log_file), level=level, enqueue=False, diagnose=False)


__all__ = [
    "JOURNAL_FORMAT",
    "READABLE_FORMAT",
    "JournalStream",
    "setup_logging",
    "stderr_is_journal",
    "syslog_priority",
]
