from __future__ import annotations

import sys

from kloros_orchestrator.stop_signals import EARLY

if sys.argv[1:2] == ["run"]:
    # Before the imports below (~0.2 s): a stop signal during start-up must never be fatal.
    EARLY.install()

from kloros_orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main())
