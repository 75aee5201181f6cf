"""The report's tests build their state directory with the in-process daemon of the runtime tests:
``tests/runtime`` (its ``test_runtime_driver`` rig and ``fakes``) is importable from here too."""

from __future__ import annotations

import sys
from pathlib import Path

_RUNTIME = str(Path(__file__).resolve().parent.parent / "runtime")
if _RUNTIME not in sys.path:
    sys.path.insert(0, _RUNTIME)
