"""Suite-wide settings: property tests draw the same examples on every run (CI included), so a
result never depends on luck (a fresh search for counter-examples is a deliberate local run with
another profile), and no example fails for being slow on a loaded machine."""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("suite", derandomize=True, deadline=None)
settings.load_profile("suite")
