from __future__ import annotations

import os
from pathlib import Path

import pytest

from kloros_orchestrator.errors import DomainError
from kloros_orchestrator.spica.domains.storage import SpicaStorage, device_of
from kloros_orchestrator.testing import SpicaDomainContract, write_tree


def storage_tree(sched: str = "none [mq-deadline] kyber bfq\n") -> dict[str, str]:
    return {
        "sys/block/loop0/queue/scheduler": "[none] mq-deadline\n",
        "sys/block/loop0/queue/read_ahead_kb": "128\n",
        "sys/block/loop0/queue/nr_requests": "128\n",
        "sys/block/sda/queue/scheduler": sched,
        "sys/block/sda/queue/read_ahead_kb": "128\n",
        "sys/block/sda/queue/nr_requests": "64\n",
        "sys/block/sdb/queue/scheduler": "[none] mq-deadline\n",
        "sys/block/sdb/queue/read_ahead_kb": "256\n",
        "sys/block/sdb/queue/nr_requests": "32\n",
        "proc/sys/vm/dirty_ratio": "20\n",
        "proc/sys/vm/dirty_background_ratio": "10\n",
        "proc/sys/vm/dirty_expire_centisecs": "3000\n",
    }


class TestSpicaStorageContract(SpicaDomainContract):
    domain_cls = SpicaStorage

    def populate(self, root: Path) -> None:
        write_tree(root, storage_tree())


def test_first_real_disk_is_chosen_and_stressors_use_the_scratch_dir(tmp_path: Path) -> None:
    root = tmp_path / "sysfs"
    write_tree(root, storage_tree())
    dom = TestSpicaStorageContract().make_domain(root, tmp_path)
    dom.discover()
    assert isinstance(dom, SpicaStorage) and dom.device == "sda"  # loop devices are skipped
    assert dom.search_space()["io_scheduler"]["choices"] == ["none", "mq-deadline", "kyber", "bfq"]
    for regime in ("idle", "normal", "stress", "mixed"):
        spec = dom.build_workload(regime, dom.stock_genome())
        assert ("--temp-path", str(tmp_path / "scratch")) == spec.extra_args[-2:]
        assert (tmp_path / "scratch").is_dir()
        for s in spec.stressors:
            size = s.options.get("hdd-bytes") or s.options.get("iomix-bytes") or s.options.get("seek-size")
            if size is not None:
                assert str(size).endswith("M") and int(str(size)[:-1]) <= 64


def test_device_holding_the_state_dir_is_preferred(tmp_path: Path) -> None:
    root = tmp_path / "sysfs"
    write_tree(root, {**storage_tree(), "sys/devices/x/block/sdb/sdb1/partition": "1\n"})
    st = os.stat(tmp_path)
    link = root / "sys/dev/block" / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    link.parent.mkdir(parents=True)
    link.symlink_to(root / "sys/devices/x/block/sdb/sdb1")
    assert device_of(tmp_path, root) == "sdb"
    dom = TestSpicaStorageContract().make_domain(root, tmp_path)
    dom.discover()
    assert isinstance(dom, SpicaStorage) and dom.device == "sdb"


def test_device_option(tmp_path: Path) -> None:
    root = tmp_path / "sysfs"
    write_tree(root, storage_tree())
    contract = TestSpicaStorageContract()
    dom = contract.make_domain(root, tmp_path, options={"device": "sdb"})
    dom.discover()
    assert isinstance(dom, SpicaStorage) and dom.device == "sdb"
    missing = contract.make_domain(root, tmp_path, options={"device": "nvme9n1"})
    missing.discover()
    assert {"io_scheduler", "read_ahead_kb", "nr_requests"} <= set(missing.dropped)
    assert missing.support == "ok"  # the dirty-page knobs remain
    with pytest.raises(DomainError):
        contract.make_domain(root, tmp_path, options={"device": "../../etc"})


def test_scheduler_is_written_before_nr_requests_and_restored_before_it(tmp_path: Path) -> None:
    root = tmp_path / "sysfs"
    write_tree(root, storage_tree())
    dom = TestSpicaStorageContract().make_domain(root, tmp_path)
    dom.discover()
    dom.apply({"io_scheduler": "bfq", "nr_requests": 512})
    order = [e.knob for e in dom.journal.pending()]
    assert order.index("io_scheduler") < order.index("nr_requests")
    assert (root / "sys/block/sda/queue/nr_requests").read_text() == "512"
    assert dom.restore() == []
    assert (root / "sys/block/sda/queue/nr_requests").read_text() == "64\n"


def test_no_scheduler_clips_queue_depth(tmp_path: Path) -> None:
    root = tmp_path / "sysfs"
    write_tree(root, storage_tree())
    dom = TestSpicaStorageContract().make_domain(root, tmp_path)
    dom.discover()
    genome = dom.validate_genome({"io_scheduler": "none", "nr_requests": 1024})
    assert genome["nr_requests"] == 64  # never above what the device queues today
    assert dom.validate_genome({"io_scheduler": "bfq", "nr_requests": 1024})["nr_requests"] == 1024
