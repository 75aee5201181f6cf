from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ke"))  # short: Unix socket paths are limited to ~107 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)
