"""What ``kloros-orchestrator <command> --help`` shows after the options: exit codes and an example."""

from __future__ import annotations

import argparse
from typing import Final

_CONFIG_EXIT = "2 the configuration has a problem (each printed as file: key: problem)"

EPILOGS: Final[dict[str, tuple[list[str], str]]] = {
    "run": (
        ["0 stopped by SIGTERM/SIGINT, or --once finished", "1 the state_dir's disk is full or failing "
         "(systemd restarts it)", "2 a configuration problem, or a state_dir it cannot use or trust",
         "3 stress-ng is missing (the message has the install command)", "130 a second SIGINT forced it"],
        "kloros-orchestrator run --config /etc/kloros-orchestrator/dream.yaml",
    ),
    "status": (["0 the daemon answered", "1 no daemon listens (after --wait S)", _CONFIG_EXIT],
               "kloros-orchestrator status --wait 30"),
    "phase-now": (["0 the window opened", "1 no daemon, or it cannot open a window now", _CONFIG_EXIT],
                  "kloros-orchestrator phase-now --config dream.yaml"),
    "validate": (["0 the configuration, regimes and caps are sound", _CONFIG_EXIT],
                 "kloros-orchestrator validate --config dream.yaml"),
    "apply": (["0 adopted (the host takes it at the next tournament boundary)",
               "1 refused (the reason is printed: not promoted, flagged, unknown) or failed", _CONFIG_EXIT],
              "kloros-orchestrator apply --domain memory --phase latest"),
    "rollback": (["0 rolled back (or nothing to roll back)", "1 failed", _CONFIG_EXIT],
                 "kloros-orchestrator rollback --domain memory"),
    "verify": (["0 every knob holds its adopted (or factory) value",
                "1 drift: one line per file (path, expected, found)", _CONFIG_EXIT],
               "kloros-orchestrator verify --domain memory"),
    "export": (["0 written (the paths are printed)", "1 nothing to export in that format, or a bad unit",
                _CONFIG_EXIT],
               "kloros-orchestrator export --domain memory --format tuned --out /etc/tuned"),
    "explain": (["0 explained", "1 no such candidate", _CONFIG_EXIT], "kloros-orchestrator explain g0c2"),
    "report": (["0 written (the path of index.html is printed)", "1 it could not be written", _CONFIG_EXIT],
               "kloros-orchestrator report --config dream.yaml --out /tmp/report"),
}  # fmt: skip


def add_epilogs(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Exit codes and an example under every sub-command's options."""
    for name, parser in sub.choices.items():
        codes, example = EPILOGS.get(name, ([], ""))
        if not codes:
            continue
        lines = ["exit codes:", *(f"  {c}" for c in codes), "", "example:", f"  {example}"]
        parser.epilog = "\n".join(lines)
        parser.formatter_class = argparse.RawDescriptionHelpFormatter


__all__ = ["EPILOGS", "add_epilogs"]
