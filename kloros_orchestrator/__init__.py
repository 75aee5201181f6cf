"""kloros-orchestrator: a self-tuning daemon for one Linux host (D-REAM + PHASE)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
