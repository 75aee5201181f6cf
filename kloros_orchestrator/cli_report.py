"""Command line: ``report`` — a self-contained HTML page about a state directory.

Light on purpose: ``cli`` imports this module for its parser, and the report package (which loads
matplotlib) is imported only when the command runs, so no other command ever loads matplotlib.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILURE = 0, 1

DESCRIPTION = textwrap.dedent(
    """\
    Write <out>/index.html: scores over generations, the hall of fame, PHASE verdicts, racing
    eliminations, pacing, trial failures, the machine and versions.

    The page is one file: figures are inline PNG images and nothing is fetched (it opens offline and
    can be mailed or archived as is). Sections with nothing to show yet say so. The daemon's files
    are only read (never changed, moved, or followed through a link), so it may keep running.
    """
)
EPILOG = textwrap.dedent(
    """\
    exit codes:
      0 written (the path of index.html is printed)
      1 the state_dir is not a directory, or the page could not be written
      2 the configuration has a problem (each printed as file: key: problem)

    example:
      kloros-orchestrator report --config /etc/kloros-orchestrator/dream.yaml --out /tmp/report
    """
)


def add_parsers(sub: Any) -> None:
    """The ``report`` sub-command on ``sub`` (argparse sub-parsers)."""
    r = sub.add_parser(
        "report",
        help="write a self-contained HTML report (figures inline) about a state_dir",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    opt = r.add_argument
    opt("--config", type=Path, metavar="F", help="dream.yaml naming the state_dir (default: embedded)")
    opt("--state-dir", type=Path, metavar="D", help="the state directory (overrides the config's)")
    opt("--out", type=Path, metavar="DIR", help="where index.html goes (default: <state_dir>/report)")


def run(args: argparse.Namespace) -> int:
    """Write the report; print the path of index.html. Exit 1 when state_dir is not a directory or
    the page cannot be written; a bad config raises ConfigError (exit 2 in ``cli``)."""
    if args.state_dir is not None:
        state_dir = Path(os.path.abspath(args.state_dir))
    else:
        from kloros_orchestrator.config import load_config

        state_dir = load_config(args.config).state_dir
    if not state_dir.is_dir():
        print(f"error: {state_dir}: not a directory (has a daemon run with this state_dir?)", file=sys.stderr)
        return EXIT_FAILURE
    out = Path(os.path.abspath(args.out)) if args.out is not None else state_dir / "report"
    from kloros_orchestrator.report import build_report

    try:
        path = build_report(state_dir, out)
    except OSError as e:
        print(f"error: {e.filename or out}: cannot write the report: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAILURE
    print(path)
    return EXIT_OK


__all__ = ["add_parsers", "run"]
