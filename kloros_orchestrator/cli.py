"""Command line: ``run``, ``status``, ``phase-now``, ``validate``; ``apply``, ``rollback``, ``verify``
and ``export`` live in ``cli_host``. The only place that exits."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from loguru import logger

from kloros_orchestrator import __version__, cli_host, cli_report, status_text
from kloros_orchestrator.cli_help import add_epilogs
from kloros_orchestrator.errors import ConfigError, KlorosError, StateDirError, ToolMissing, state_dir_error
from kloros_orchestrator.stop_signals import EARLY

if TYPE_CHECKING:
    from kloros_orchestrator.safefs import Rejected

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2  # also an unusable state_dir: one line naming the path and the reason
EXIT_TOOL_MISSING = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kloros-orchestrator", description="Self-tuning daemon: D-REAM + PHASE.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", type=Path, help="dream.yaml (default: the embedded default)")
    run.add_argument("--state-dir", help="override state_dir")
    run.add_argument("--socket", help="override the status socket path")
    run.add_argument("--epochs-per-cycle", type=int, help="override dream.epochs_per_cycle")
    run.add_argument("--max-parallel", type=int, help="override dream.max_parallel")
    run.add_argument(
        "--once", action="store_true", help="one D-REAM pass over the enabled domains, then exit"
    )

    for name, text in (("status", "query the running daemon"), ("phase-now", "open a PHASE window now")):
        q = sub.add_parser(name, help=text)
        q.add_argument(
            "--socket", help="the daemon's socket (default: from --config or the embedded default)"
        )
        q.add_argument("--config", type=Path, help="read the socket path from this dream.yaml")
        q.add_argument(
            "--wait",
            type=float,
            default=0.0,
            metavar="S",
            help="wait up to S seconds for a daemon that is still starting (default: 0)",
        )
        if name == "status":
            q.add_argument("--json", action="store_true", help="print the raw status object")

    v = sub.add_parser("validate", help="check dream.yaml, regimes and caps; print every problem")
    v.add_argument("--config", type=Path, help="dream.yaml (default: the embedded default)")
    cli_host.add_parsers(sub)
    cli_report.add_parsers(sub)
    add_epilogs(sub)
    return p


def _single(exc: BaseException) -> BaseException:
    """The one error inside (nested) single-member exception groups, as anyio raises them."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _main(args, argv)
    except BaseExceptionGroup as group:
        leaf = _single(group)
        if not isinstance(leaf, KlorosError):
            raise
        print(f"error: {leaf}", file=sys.stderr)
        return EXIT_TOOL_MISSING if isinstance(leaf, ToolMissing) else EXIT_FAILURE


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}  # filled below the command functions


def _main(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Run the command; its errors as one line (exit 2 for a bad config, 3 for a missing tool, else 1)."""
    try:
        if args.command in cli_host.COMMANDS:
            return cli_host.run(args, argv)
        return _COMMANDS[args.command](args)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except ToolMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_TOOL_MISSING
    except KlorosError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILURE


def _validate(args: argparse.Namespace) -> int:
    from kloros_orchestrator.config import load_config

    loaded = load_config(args.config)
    where = loaded.path or "embedded default"
    domains = ", ".join(loaded.config.dream.domains)
    print(f"{where}: ok (domains: {domains}; config hash {loaded.config_hash})")
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    # From here on (from __main__'s first lines under `python -m`) a stop signal is never fatal:
    # recorded now, replayed once the daemon's loop runs. Before the heavy imports below.
    early = EARLY.install()
    from kloros_orchestrator.config import load_config
    from kloros_orchestrator.logs import setup_logging
    from kloros_orchestrator.runtime.driver import run_daemon
    from kloros_orchestrator.runtime.workloads import find_stress_ng
    from kloros_orchestrator.statedir import check_state_dir

    overrides: dict[str, Any] = {}
    if args.state_dir:
        overrides["state_dir"] = args.state_dir
    if args.socket:
        overrides["socket"] = args.socket
    if args.epochs_per_cycle is not None:
        overrides["dream.epochs_per_cycle"] = args.epochs_per_cycle
    if args.max_parallel is not None:
        overrides["dream.max_parallel"] = args.max_parallel
    loaded = load_config(args.config, overrides=overrides)
    # Nothing the daemon creates may be writable by group or others: check_state_dir refuses that.
    os.umask(os.umask(0o022) | 0o022)
    try:
        # Before anything under state_dir is written: the first touch is the daemon log.
        moved = check_state_dir(loaded.state_dir, socket_dir=loaded.socket_path.parent)
        log_file = loaded.config.log_file
        setup_logging(loaded.config.log_level, log_file=Path(log_file).absolute() if log_file else None)
        _record_moved(loaded.state_dir, moved)
        for warning in loaded.warnings:
            logger.warning("configuration: {}", warning)
    except StateDirError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as e:  # read-only or vanished (exit 2); full or failing (exit 1: retried later)
        err = state_dir_error(e, loaded.state_dir)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(err, StateDirError) else EXIT_FAILURE
    find_stress_ng()  # exit 3 with the install command before anything starts
    try:
        return run_daemon(loaded, once=args.once, early=early)
    except StateDirError as e:  # found by the daemon's own start-up (the lock, a full disk)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG


def _record_moved(state_dir: Path, moved: list[Rejected]) -> None:
    """What check_state_dir moved aside, in the daemon log and as events (neither existed yet)."""
    from kloros_orchestrator.runtime.ports import EventLog
    from kloros_orchestrator.store import StatePaths

    events = EventLog(StatePaths(state_dir).events, time.time)
    for r in moved:
        logger.warning("{} was {}: moved aside to {}", r.path, r.reason, r.moved_to)
        events.record("state_entry_rejected", **r.fields())


SYSTEM_SOCKET: Final = Path("/run/kloros-orchestrator/kloros.sock")  # the installed unit's


def _socket_path(args: argparse.Namespace) -> Path:
    """``--socket``, else the config's; with neither flag, the system daemon's socket when there is
    no local one (``status`` from any directory finds the daemon systemd runs)."""
    if args.socket:
        return Path(args.socket)
    from kloros_orchestrator.config import load_config

    local = load_config(args.config).socket_path
    if args.config is None and not local.exists() and SYSTEM_SOCKET.exists():
        return SYSTEM_SOCKET
    return local


def _status(args: argparse.Namespace) -> int:
    from kloros_orchestrator.runtime.control import query_waiting

    reply = query_waiting(_socket_path(args), {"cmd": "status"}, wait_s=args.wait)
    if not reply.get("ok"):
        print(f"error: {reply.get('error', 'daemon answered not ok')}", file=sys.stderr)
        return EXIT_FAILURE
    status = reply["status"]
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(format_status(status))
    return EXIT_OK


def _phase_now(args: argparse.Namespace) -> int:
    from kloros_orchestrator.runtime.control import query_waiting

    reply = query_waiting(_socket_path(args), {"cmd": "phase-now"}, wait_s=args.wait)
    if not reply.get("ok"):
        print(f"error: {reply.get('error', 'daemon refused')}", file=sys.stderr)
        return EXIT_FAILURE
    print(reply.get("message", "PHASE window requested"))
    return EXIT_OK


_COMMANDS.update(validate=_validate, run=_run, status=_status, report=cli_report.run)
_COMMANDS["phase-now"] = _phase_now


def _when(iso: str | None) -> str:
    return status_text.when(iso)


def format_status(s: dict[str, Any]) -> str:
    """Readable summary of the status object (``status --json``; README, "Command line (contract)")."""
    return status_text.format_status(s)
