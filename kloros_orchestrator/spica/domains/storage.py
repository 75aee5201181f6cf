"""Storage domain: one block device's queue (scheduler, read-ahead, depth) and dirty-page writeback."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import ClassVar

from loguru import logger

from kloros_orchestrator.errors import DomainError
from kloros_orchestrator.model import Genome
from kloros_orchestrator.spica.base import SpicaDomain
from kloros_orchestrator.spica.knobs import Knob, RefusedPath, read_knob
from kloros_orchestrator.spica.registry import register

_VM = "proc/sys/vm"
_VIRTUAL_DISK = re.compile(r"^(loop|zram|ram|nbd|sr|fd)\d*")
_DEV_NAME = re.compile(r"^[A-Za-z0-9._:-]+$")


def device_of(path: Path, sysfs_root: Path) -> str | None:
    """The whole-disk name (``vda``, ``nvme0n1``) holding ``path``, via sys/dev/block; None if unknown."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    link = Path(sysfs_root) / "sys/dev/block" / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    try:
        target = link.resolve(strict=True)
    except OSError:
        return None
    # A partition's directory sits inside its disk's directory and has a "partition" file.
    return target.parent.name if (target / "partition").exists() else target.name


def _queue_knobs(dev: str) -> list[Knob]:
    q = f"sys/block/{dev}/queue"
    return [
        # The scheduler comes first: writing it resets nr_requests, so nr_requests is
        # written after it (apply order) and restored after it (journal order).
        Knob("io_scheduler", "choice", fmt="bracket", path=f"{q}/scheduler",
             description=f"I/O scheduler of {dev} (choices offered by the kernel)"),
        Knob("read_ahead_kb", "int", low=16, high=4096, log=True, path=f"{q}/read_ahead_kb",
             description=f"read-ahead of {dev}"),
        Knob("nr_requests", "int", low=32, high=1024, log=True, path=f"{q}/nr_requests",
             description=f"request queue depth of {dev}"),
    ]  # fmt: skip


def _vm_knobs() -> list[Knob]:
    return [
        Knob("dirty_ratio", "int", low=5, high=60, path=f"{_VM}/dirty_ratio",
             description="vm.dirty_ratio: % of memory dirty before writers block"),
        Knob("dirty_background_ratio", "int", low=1, high=30, path=f"{_VM}/dirty_background_ratio",
             description="vm.dirty_background_ratio: % dirty before background writeback"),
        Knob("dirty_expire_centisecs", "int", low=500, high=6000, log=True,
             path=f"{_VM}/dirty_expire_centisecs", description="vm.dirty_expire_centisecs"),
    ]  # fmt: skip


def pick_device(sysfs_root: Path, near: Path, requested: str | None) -> tuple[str | None, str]:
    """Choose the device to tune: ``requested``, else the one holding ``near``, else the first real disk."""
    block = Path(sysfs_root) / "sys/block"

    def has_queue(name: str) -> bool:
        return (block / name / "queue").is_dir()

    if requested is not None:
        return (requested, "") if has_queue(requested) else (None, f"device {requested!r} has no queue")
    near_dev = device_of(near, sysfs_root)
    if near_dev is not None and has_queue(near_dev):
        return near_dev, ""
    names: list[str] = []
    with contextlib.suppress(OSError):
        names = sorted(p.name for p in block.iterdir())
    for name in names:
        if not _VIRTUAL_DISK.match(name) and has_queue(name):
            return name, ""
    return None, "no block device with a queue under sys/block"


@register
class SpicaStorage(SpicaDomain):
    """Queue knobs of one disk (option ``device``; default: the disk holding the state dir)."""

    name: ClassVar[str] = "storage"
    description: ClassVar[str] = "block queue and dirty-page writeback"
    option_keys: ClassVar[frozenset[str]] = frozenset({"device"})
    device: str | None = None  # chosen at discovery
    device_reason: str = ""
    _hw_depth: int | None = None

    def _validate_options(self) -> None:
        dev = self.options.get("device")
        if dev is not None and (not isinstance(dev, str) or not _DEV_NAME.match(dev)):
            raise DomainError(f"storage: option device must be a block device name like 'sda' (got {dev!r})")

    def declare_knobs(self) -> list[Knob]:
        near = self.scratch_dir if self.scratch_dir.exists() else self.scratch_dir.parent
        dev, self.device_reason = pick_device(self.sysfs_root, near, self.options.get("device"))
        self.device = dev
        knobs: list[Knob] = []
        # A requested device that is missing still declares its knobs, so each is dropped with a reason.
        dev = dev or self.options.get("device")
        if dev is None:
            logger.info("storage: no block device to tune: {}", self.device_reason)
        else:
            knobs += _queue_knobs(dev)
            self._hw_depth = self._stock_depth_without_scheduler(f"sys/block/{dev}/queue")
        return knobs + _vm_knobs()

    def restore_knobs(self) -> list[Knob]:
        # A crashed run may have tuned another disk (another device option or state dir): every
        # disk's queue knobs are declared, so its journal entries are restored, not rejected.
        names: list[str] = []
        with contextlib.suppress(OSError):
            block = self.sysfs_root / "sys/block"
            names = sorted(p.name for p in block.iterdir() if _DEV_NAME.match(p.name))
        return [k for dev in names for k in _queue_knobs(dev)] + _vm_knobs()

    def _stock_depth_without_scheduler(self, queue: str) -> int | None:
        # Without an elevator the kernel refuses nr_requests above the hardware tag depth; that
        # depth is only known when the device runs without a scheduler now (its nr_requests).
        with contextlib.suppress(OSError, UnicodeDecodeError, ValueError, RefusedPath):
            sched = read_knob(self.sysfs_root / queue / "scheduler", self.sysfs_root)
            if "[none]" in sched:
                return int(read_knob(self.sysfs_root / queue / "nr_requests", self.sysfs_root).strip())
        return None

    def normalize_genome(self, genome: Genome) -> Genome:
        if "read_ahead_kb" in genome:
            # The kernel keeps read-ahead in whole pages (37 reads back as 36): ask only for what it
            # keeps, or reading the knob back after a trial would see a drift that is only rounding.
            page_kb = max(1, os.sysconf("SC_PAGE_SIZE") // 1024)
            genome = {**genome, "read_ahead_kb": int(genome["read_ahead_kb"]) // page_kb * page_kb}
        if genome.get("io_scheduler") != "none" or "nr_requests" not in genome:
            return genome
        stock = self.stock_genome()
        # Unknown hardware depth: never ask for more than the device queues today.
        limit = self._hw_depth or int(stock.get("nr_requests", genome["nr_requests"]))
        return {**genome, "nr_requests": min(int(genome["nr_requests"]), limit)}
