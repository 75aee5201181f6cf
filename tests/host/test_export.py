"""Export to TuneD, sysctl.d/tmpfiles.d and systemd: the rendered text, then the real tools reading it.

The unit tests build settings by hand. The tool tests prove the files mean what we intend to the
programs that apply them: TuneD's own profile loader (merged with a stock profile, options checked
against TuneD's plugin declarations), ``sysctl --dry-run -p`` on the live values of real memory
knobs (nothing is written), ``systemd-tmpfiles --create --root`` into a scratch tree, and
``systemd-analyze verify`` on a drop-in. Each tool test skips, with the reason, without its tool.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from kloros_orchestrator import __version__
from kloros_orchestrator.host.export import (
    EXPORT_FORMATS,
    FACTORY_TEXT,
    ExportError,
    ExportFormat,
    ExportSubject,
    export,
    render,
    unit_name,
)
from kloros_orchestrator.host.records import KnobSetting, Provenance

SYSTEM_PYTHON = "/usr/bin/python3"
TOOL_TIMEOUT_S = 60
COMMAND = "kloros-orchestrator export memory --format tuned --out /tmp/x"
PROV = Provenance(
    by="auto",
    at="2026-01-02T03:04:05Z",
    phase_run_id="20260102T030000Z",
    cand_id="g3c1",
    spica_id="spica-memory-7",
    score_v2=0.125,
    score_ci95=(0.05, 0.2),
    evidence="score_v2 +12.5%\nabove the baseline",
)
THP = "sys/kernel/mm/transparent_hugepage"
CPU = "sys/devices/system/cpu"


def _sys(knob: str, text: str, *paths: str, fmt: str = "plain", description: str = "") -> KnobSetting:
    kind = "int" if text.lstrip("-").isdigit() else "choice"
    value: int | str = int(text) if kind == "int" else text
    return KnobSetting(knob, "system", kind, value, text, paths, fmt, None, description)  # type: ignore[arg-type]


def _proc(knob: str, text: str, cpus: tuple[int, ...] | None = None) -> KnobSetting:
    kind = "int" if text.lstrip("-").isdigit() else "choice"
    value: int | str = int(text) if kind == "int" else text
    return KnobSetting(knob, "process", kind, value, text, cpus=cpus)  # type: ignore[arg-type]


MEMORY = [
    _sys("swappiness", "33", "proc/sys/vm/swappiness", description="vm.swappiness: anon vs file reclaim"),
    _sys("thp_enabled", "madvise", f"{THP}/enabled", fmt="bracket", description="transparent huge pages"),
    _sys("thp_defrag", "defer+madvise", f"{THP}/defrag", fmt="bracket"),
]
STORAGE = [
    _sys("io_scheduler", "mq-deadline", "sys/block/sda/queue/scheduler", fmt="bracket"),
    _sys("read_ahead_kb", "512", "sys/block/sda/queue/read_ahead_kb", description="read-ahead of sda"),
    _sys("nr_requests", "64", "sys/block/sda/queue/nr_requests"),
    _sys("dirty_ratio", "15", "proc/sys/vm/dirty_ratio"),
]
GOVERNOR = _sys(
    "governor",
    "powersave",
    f"{CPU}/cpu0/cpufreq/scaling_governor",
    f"{CPU}/cpu1/cpufreq/scaling_governor",
    description="cpufreq governor (every CPU)",
)
PROCESS = [
    _proc("nice", "-5"),
    _proc("sched_policy", "batch"),
    _proc("affinity", "half", cpus=(0, 1)),
    _proc("workers", "4"),
]
CPU_DOMAIN = [*PROCESS, GOVERNOR]


def _subject(
    domain: str = "memory",
    settings: Sequence[KnobSetting] = MEMORY,
    *,
    label: str = "adopted",
    provenance: Provenance | None = PROV,
) -> ExportSubject:
    return ExportSubject(domain, label, settings, provenance, COMMAND, __version__)


def _tuned_ini(text: str) -> configparser.ConfigParser:
    """Parsed the way TuneD's loader parses a profile (profiles/loader.py)."""
    cfg = configparser.ConfigParser(delimiters=("=",), inline_comment_prefixes=("#",), strict=False)
    cfg.optionxform = str  # type: ignore[assignment,method-assign]
    cfg.read_string(text)
    return cfg


def _only(files: dict[str, str]) -> str:
    assert len(files) == 1, sorted(files)
    return next(iter(files.values()))


# --- tuned -----------------------------------------------------------------------------------------
def test_tuned_memory_maps_to_sysctl_and_vm() -> None:
    files = render(_subject(), "tuned")
    assert list(files) == ["kloros-memory/tuned.conf"]
    cfg = _tuned_ini(files["kloros-memory/tuned.conf"])
    assert cfg["main"]["summary"].startswith("kloros-orchestrator adopted configuration of memory")
    assert dict(cfg["sysctl"]) == {"vm.swappiness": "33"}
    assert dict(cfg["vm"]) == {
        "transparent_hugepages": "madvise",
        "transparent_hugepage.defrag": "defer+madvise",
    }
    assert cfg.sections() == ["main", "sysctl", "vm"]
    text = files["kloros-memory/tuned.conf"]
    assert "# swappiness: vm.swappiness: anon vs file reclaim\nvm.swappiness=33\n" in text


def test_tuned_storage_one_disk_unit_per_device_and_sysfs_for_the_rest() -> None:
    sdb = [
        _sys("io_scheduler", "bfq", "sys/block/sdb/queue/scheduler", fmt="bracket"),
        _sys("read_ahead_kb", "128", "sys/block/sdb/queue/read_ahead_kb"),
    ]
    cfg = _tuned_ini(_only(render(_subject("storage", [*STORAGE, *sdb]), "tuned")))
    sda = dict(cfg["disk-sda"])
    assert sda == {"type": "disk", "devices": "sda", "priority": "-10", "dynamic": "0",
                   "elevator": "mq-deadline", "readahead": "512"}  # fmt: skip
    assert dict(cfg["disk-sdb"])["elevator"] == "bfq"
    assert dict(cfg["disk-sdb"])["readahead"] == "128"
    assert dict(cfg["sysfs"]) == {"/sys/block/sda/queue/nr_requests": "64"}
    assert dict(cfg["sysctl"]) == {"vm.dirty_ratio": "15"}


def test_tuned_cpu_governor_in_cpu_unit_and_process_knobs_as_a_comment() -> None:
    epp = _sys("epp", "balance_power", f"{CPU}/cpu0/cpufreq/energy_performance_preference")
    text = _only(render(_subject("cpu", [*CPU_DOMAIN, epp]), "tuned"))
    cfg = _tuned_ini(text)
    assert dict(cfg["cpu"]) == {"governor": "powersave"}
    # TuneD's energy_performance_preference writes cpufreq/policyN, not cpuN/cpufreq: not the same file.
    assert dict(cfg["sysfs"]) == {f"/{CPU}/cpu0/cpufreq/energy_performance_preference": "balance_power"}
    trailer = "# process knobs (shape a workload; see --format systemd): nice=-5 sched_policy=batch "
    assert trailer + "affinity=half (CPUs 0 1) workers=4\n" in text


def test_tuned_falls_back_to_sysfs_where_no_plugin_writes_exactly_that_file() -> None:
    partial_governor = _sys("governor", "powersave", f"{CPU}/cpu1/cpufreq/scaling_governor")  # not cpu0..N
    odd_thp = _sys("thp_enabled", "always-inherit", f"{THP}/enabled", fmt="bracket")  # vm refuses it
    cfg = _tuned_ini(_only(render(_subject("x", [partial_governor, odd_thp]), "tuned")))
    assert cfg.sections() == ["main", "sysfs"]
    assert dict(cfg["sysfs"]) == {
        f"/{CPU}/cpu1/cpufreq/scaling_governor": "powersave",
        f"/{THP}/enabled": "always-inherit",
    }


def test_tuned_refuses_what_it_cannot_express() -> None:
    dotted = _sys("rp_filter", "1", "proc/sys/net/ipv4/conf/eth0.100/rp_filter")
    with pytest.raises(ExportError, match="use --format sysctl"):
        render(_subject("net", [dotted]), "tuned")
    with pytest.raises(ExportError, match="comment or a variable"):
        render(_subject("x", [_sys("k", "a$b", "sys/kernel/k")]), "tuned")
    clash = [_sys("a", "1", "sys/kernel/k"), _sys("b", "2", "sys/kernel/k")]
    with pytest.raises(ExportError, match="both"):
        render(_subject("x", clash), "tuned")


# --- sysctl.d and tmpfiles.d -----------------------------------------------------------------------
def test_sysctl_splits_proc_sys_and_sys_files() -> None:
    files = render(_subject(), "sysctl")
    assert sorted(files) == ["sysctl.d/90-kloros-memory.conf", "tmpfiles.d/kloros-memory.conf"]
    sysctl_lines = [
        ln for ln in files["sysctl.d/90-kloros-memory.conf"].splitlines() if not ln.startswith("#")
    ]
    assert [ln for ln in sysctl_lines if ln] == ["vm.swappiness = 33"]
    tmp_lines = [ln for ln in files["tmpfiles.d/kloros-memory.conf"].splitlines() if ln.startswith("w ")]
    assert tmp_lines == [
        f"w /{THP}/enabled - - - - madvise",
        f"w /{THP}/defrag - - - - defer+madvise",
    ]


def test_sysctl_writes_only_the_files_needed() -> None:
    assert list(render(_subject("m", MEMORY[:1]), "sysctl")) == ["sysctl.d/90-kloros-m.conf"]
    assert list(render(_subject("s", STORAGE[:3]), "sysctl")) == ["tmpfiles.d/kloros-s.conf"]


def test_sysctl_key_with_a_dotted_component_keeps_slashes_and_tmpfiles_escapes() -> None:
    dotted = _sys("rp_filter", "1", "proc/sys/net/ipv4/conf/eth0.100/rp_filter")
    odd = _sys("odd", "50%\\x", "sys/kernel/odd")
    files = render(_subject("net", [dotted, odd]), "sysctl")
    assert "net/ipv4/conf/eth0.100/rp_filter = 1\n" in files["sysctl.d/90-kloros-net.conf"]
    assert "w /sys/kernel/odd - - - - 50%%\\\\x\n" in files["tmpfiles.d/kloros-net.conf"]


# --- systemd ---------------------------------------------------------------------------------------
def test_systemd_drop_in_sets_the_service_directives() -> None:
    files = render(_subject("cpu", CPU_DOMAIN), "systemd", unit="kloros-workload")
    assert list(files) == ["kloros-workload.service.d/90-kloros-cpu.conf"]
    text = files["kloros-workload.service.d/90-kloros-cpu.conf"]
    cfg = configparser.ConfigParser(strict=False, interpolation=None)
    cfg.optionxform = str  # type: ignore[assignment,method-assign]
    cfg.read_string(text)
    assert dict(cfg["Service"]) == {
        "Nice": "-5",
        "CPUSchedulingPolicy": "batch",
        "CPUAffinity": "0 1",
        "Environment": '"KLR_WORKERS=4"',
    }
    assert "# host knobs (see --format tuned or --format sysctl): governor=powersave\n" in text


def test_systemd_other_process_knobs_reach_the_environment_quoted() -> None:
    knobs = [_proc("batch_size", 'a "b" 5%'), _proc("affinity", "half")]  # affinity without a CPU list
    text = _only(render(_subject("cmd", knobs), "systemd", unit="app.service"))
    assert 'Environment="KLR_KNOB_BATCH_SIZE=a \\"b\\" 5%%"\n' in text
    assert "# affinity=half: its CPU list on this host is unknown, not exported\n" in text
    assert "CPUAffinity" not in text


@pytest.mark.parametrize(
    ("unit", "expected"),
    [("stress", "stress.service"), ("stress.service", "stress.service"), ("a@.service", "a@.service"),
     ("my.app", "my.app.service"), ("dev-sda\\x2d1", "dev-sda\\x2d1.service")],
)  # fmt: skip
def test_unit_name_appends_service(unit: str, expected: str) -> None:
    assert unit_name(unit) == expected


@pytest.mark.parametrize("unit", ["", "a b", "../etc", "a/b", "x;y", ".service", "x.socket", "x.scope"])
def test_unit_name_refuses_what_systemd_would_not_take(unit: str) -> None:
    with pytest.raises(ExportError) as err:
        unit_name(unit)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("knob", "match"), [(_proc("nice", "-30"), "niceness"), (_proc("sched_policy", "deadline"), "one of")]
)
def test_systemd_refuses_values_systemd_would_reject(knob: KnobSetting, match: str) -> None:
    with pytest.raises(ExportError, match=match):
        render(_subject("cpu", [knob]), "systemd", unit="w")


# --- header and errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_every_file_starts_with_the_header(fmt: ExportFormat) -> None:
    files = render(_subject("cpu", [*CPU_DOMAIN, *MEMORY]), fmt, unit="w")
    assert files
    for name, text in files.items():
        head = text.split("\n\n", 1)[0].splitlines()
        assert all(ln.startswith("# ") for ln in head), name
        assert head[0].startswith(f"# kloros-orchestrator {__version__}: ")
        assert head[1:] == [
            "# domain: cpu",
            "# label: adopted",
            "# provenance: adopted by auto at 2026-01-02T03:04:05Z",
            "# phase_run_id: 20260102T030000Z",
            "# cand_id: g3c1",
            "# spica_id: spica-memory-7",
            "# score_v2: 0.125 (95% CI 0.05 .. 0.2)",
            "# evidence: score_v2 +12.5% above the baseline",
            f"# produced by: {COMMAND}",
        ], name


def test_header_of_factory_and_forced_configurations() -> None:
    factory = _only(render(_subject(label="factory", provenance=None), "tuned"))
    assert f"# provenance: {FACTORY_TEXT}\n" in factory
    variant = _only(render(_subject(label="g3c1", provenance=None), "tuned"))
    assert "# provenance: none recorded (g3c1 was not adopted)\n" in variant
    forced = Provenance(by="operator", at="2026-01-03T00:00:00Z", evidence="operator's call", forced=True)
    text = _only(render(_subject(provenance=forced), "tuned"))
    assert (
        "# provenance: adopted by operator at 2026-01-03T00:00:00Z (forced)\n# evidence: operator's call\n"
        in text
    )
    assert "score_v2" not in text


def test_systemd_without_unit_says_where_to_set_it() -> None:
    with pytest.raises(ExportError) as err:
        render(_subject("cpu", CPU_DOMAIN), "systemd")
    assert str(err.value) == (
        "export --format systemd needs the unit whose workload these knobs shape: set domain_options.cpu.unit"
    )


def test_each_format_names_the_one_that_fits_when_it_has_nothing_to_export() -> None:
    with pytest.raises(ExportError, match="use --format tuned or --format sysctl"):
        render(_subject(), "systemd", unit="w")
    for fmt in ("tuned", "sysctl"):
        with pytest.raises(ExportError, match="use --format systemd"):
            render(_subject("cpu", PROCESS), fmt)  # type: ignore[arg-type]
    tool_only = [KnobSetting("power_limit_w", "system", "int", 200, "200")]
    with pytest.raises(ExportError, match="no file-backed knob"):
        render(_subject("gpu", tool_only), "tuned")
    with pytest.raises(ExportError, match="no format fits"):
        render(_subject("gpu", tool_only), "systemd", unit="w")


@pytest.mark.parametrize(
    ("subject", "fmt", "match"),
    [
        (_subject(settings=[]), "tuned", "no knob settings"),
        (_subject("../etc"), "tuned", "not exportable"),
        (_subject(label="a b"), "tuned", "label"),
        (_subject(), "yaml", "unknown export format"),
        (_subject(settings=[_sys("k", "1", "etc/passwd")]), "sysctl", "under neither"),
        (_subject(settings=[_sys("k", "1", "sys/../etc/x")]), "sysctl", "cannot be exported"),
        (_subject(settings=[_sys("k", "1", "sys//kernel/x")]), "sysctl", "cannot be exported"),
        (_subject(settings=[_sys("k", "1", "sys/block/sd*/x")]), "tuned", "cannot be exported"),
        (_subject(settings=[_sys("k", "1\n2", "sys/kernel/k")]), "sysctl", "not one line"),
    ],
)
def test_errors_are_one_line(subject: ExportSubject, fmt: Any, match: str) -> None:
    with pytest.raises(ExportError, match=match) as err:
        render(subject, fmt)
    assert "\n" not in str(err.value)


def test_export_writes_every_rendered_file_atomically(tmp_path: Path) -> None:
    subject = _subject()
    paths = export(subject, "sysctl", tmp_path / "out")
    expected = render(subject, "sysctl")
    assert paths == [tmp_path / "out" / rel for rel in expected]
    for path, text in zip(paths, expected.values(), strict=True):
        assert path.read_text() == text
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    again = export(
        _subject(settings=[_sys("swappiness", "5", "proc/sys/vm/swappiness")]), "sysctl", tmp_path / "out"
    )
    assert "vm.swappiness = 5\n" in again[0].read_text()
    assert [p.name for p in again[0].parent.iterdir()] == ["90-kloros-memory.conf"]  # no temporary left


def test_export_failure_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "kloros-memory").write_text("a file where the profile directory goes")
    with pytest.raises(ExportError, match="cannot write the export") as err:
        export(_subject(), "tuned", tmp_path)
    assert "\n" not in str(err.value)


# --- TuneD's own loader ----------------------------------------------------------------------------
# Run with the system Python: TuneD's loader, locator, factory, merger, global config and variables,
# wired as tuned/daemon/application.py wires them, with our directory appended to TuneD's load
# directories. Prints the stock profile alone and merged with ours, the order in which
# units/manager.py assigns devices (by priority), the options TuneD's plugin classes do not declare,
# and how plugin_disk parses our readahead values.
_TUNED_SCRIPT = r"""
import inspect, json, sys
import tuned.consts as consts
from tuned.plugins.plugin_disk import DiskPlugin
from tuned.plugins.repository import Repository
from tuned.profiles.factory import Factory
from tuned.profiles.loader import Loader
from tuned.profiles.locator import Locator
from tuned.profiles.merger import Merger
from tuned.profiles.variables import Variables
from tuned.utils.global_config import GlobalConfig

ours_dir, ours = sys.argv[1], sys.argv[2:]
locator = Locator(list(consts.LOAD_DIRECTORIES) + [ours_dir])
def loader():
    return Loader(locator, Factory(), Merger(), GlobalConfig(), Variables())
known = locator.get_known_names()
stock = next((n for n in ("throughput-performance", "balanced") if n in known),
             next(n for n in known if not n.startswith("kloros-")))
def dump(profile):
    return {name: {"type": u.type, "devices": u.devices, "options": dict(u.options)}
            for name, u in profile.units.items()}
merged = loader().load([stock] + ours)
repo = Repository(*([None] * 8))
DYNAMIC = ("sysctl", "sysfs")  # plugins that set _has_dynamic_options (any option name)
unknown = {}
for name, u in merged.units.items():
    cls = repo.load_plugin(u.type)
    get = inspect.getattr_static(cls, "_get_config_options")
    declared = cls._get_config_options() if isinstance(get, classmethod) else cls._get_config_options(None)
    if u.type not in DYNAMIC:
        unknown[name] = sorted(set(u.options) - set(declared) - {"priority"})
def priority(kv):
    return int(kv[1].options.get("priority", 0))
order = [name for name, u in sorted(merged.units.items(), key=priority)]
readahead = {name: DiskPlugin._parse_ra(None, u.options["readahead"])
             for name, u in merged.units.items() if u.type == "disk" and "readahead" in u.options
             and not u.options["readahead"].startswith(">")}
print(json.dumps({"stock": stock, "stock_units": dump(loader().load([stock])), "merged": dump(merged),
                  "name": merged.name, "unknown": unknown, "order": order, "readahead": readahead}))
"""


def _system_tuned() -> None:
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"{SYSTEM_PYTHON} is absent: TuneD (Debian package 'tuned') cannot be loaded")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import tuned"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(
            "TuneD is not installed ('make tuned' or apt-get install tuned): " + probe.stderr.strip()[-200:]
        )


def test_tuned_loader_merges_our_profiles_over_a_stock_one(tmp_path: Path) -> None:
    _system_tuned()
    subjects = [_subject("memory", MEMORY), _subject("storage", STORAGE), _subject("cpu", CPU_DOMAIN)]
    for subject in subjects:
        export(subject, "tuned", tmp_path)
    names = [f"kloros-{s.domain}" for s in subjects]
    proc = subprocess.run(
        [SYSTEM_PYTHON, "-c", _TUNED_SCRIPT, str(tmp_path), *names],
        capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    merged, stock_units = out["merged"], out["stock_units"]
    assert out["name"] == " ".join([out["stock"], *names])
    assert merged["sysctl"]["options"]["vm.swappiness"] == "33"
    assert merged["sysctl"]["options"]["vm.dirty_ratio"] == "15"
    assert merged["vm"]["options"]["transparent_hugepages"] == "madvise"
    assert merged["vm"]["options"]["transparent_hugepage.defrag"] == "defer+madvise"
    assert merged["disk-sda"] == {
        "type": "disk",
        "devices": "sda",
        "options": {"priority": "-10", "dynamic": "0", "elevator": "mq-deadline", "readahead": "512"},
    }
    assert merged["sysfs"]["options"] == {"/sys/block/sda/queue/nr_requests": "64"}
    assert merged["cpu"]["type"] == "cpu" and merged["cpu"]["devices"] == "*"
    assert merged["cpu"]["options"]["governor"] == "powersave"
    # Every option of the stock profile we do not set survives the merge.
    ours = {"vm.swappiness", "vm.dirty_ratio", "governor"}
    for unit, body in stock_units.items():
        for option, value in body["options"].items():
            if option not in ours:
                assert merged[unit]["options"][option] == value, (unit, option)
    # TuneD's plugins declare every option we use, and read our readahead as KiB (read_ahead_kb).
    assert {u: bad for u, bad in out["unknown"].items() if bad} == {}
    assert out["readahead"] == {"disk-sda": 512}
    # units/manager.py hands a device to units in priority order: ours gets sda before a stock [disk].
    order = out["order"]
    assert order[0] == "disk-sda"
    if "disk" in merged:
        assert order.index("disk-sda") < order.index("disk")


# --- sysctl on this host's live values (dry run: nothing is written) -------------------------------
def test_sysctl_file_of_live_memory_values_parses_with_sysctl(tmp_path: Path) -> None:
    keys = ["vm/swappiness", "vm/vfs_cache_pressure", "vm/min_free_kbytes", "vm/zone_reclaim_mode"]
    live = {k: Path("/proc/sys", k).read_text().strip() for k in keys if Path("/proc/sys", k).is_file()}
    if not live:
        pytest.skip("this host has none of the memory knobs under /proc/sys/vm")
    settings = [_sys(k.split("/")[1], text, f"proc/sys/{k}") for k, text in live.items()]
    (path,) = export(_subject("memory", settings), "sysctl", tmp_path)
    pairs = [ln.split(" = ") for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    assert {key: value for key, value in pairs} == {k.replace("/", "."): v for k, v in live.items()}
    for key, _ in pairs:
        assert Path("/proc/sys", key.replace(".", "/")).is_file(), key
    sysctl = shutil.which("sysctl") or shutil.which("sysctl", path="/usr/sbin:/sbin")
    if sysctl is None:
        pytest.skip("sysctl (procps) is not installed: the file's keys were checked, its parsing was not")
    helptext = subprocess.run([sysctl, "--help"], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    if "--dry-run" not in helptext.stdout + helptext.stderr:
        pytest.skip("this sysctl has no --dry-run: 'sysctl -p' would write to the host, so it is not run")
    proc = subprocess.run(
        [sysctl, "--dry-run", "-p", str(path)], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.splitlines() == [f"{k} = {v}" for k, v in pairs]
    assert {k: Path("/proc/sys", k).read_text().strip() for k in live} == live


# --- tmpfiles.d into a scratch root --------------------------------------------------------------
def test_tmpfiles_lines_write_our_values_under_a_scratch_root(tmp_path: Path) -> None:
    tool = shutil.which("systemd-tmpfiles")
    if tool is None:
        pytest.skip("systemd-tmpfiles is not installed: the tmpfiles.d lines were not checked by systemd")
    odd = _sys("odd", "50%\\x y", "sys/kernel/kloros_test/odd")
    settings = [*MEMORY, *STORAGE, GOVERNOR, odd]
    files = export(_subject("all", settings), "sysctl", tmp_path / "out")
    conf = next(p for p in files if p.parent.name == "tmpfiles.d")
    root = tmp_path / "root"
    expected = {path: s.text for s in settings for path in s.paths if path.startswith("sys/")}
    assert len(expected) == 8
    for rel in expected:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("")  # a regular file stands for the sysfs attribute
    proc = subprocess.run(
        [tool, "--create", f"--root={root}", str(conf.resolve())],
        capture_output=True, text=True, timeout=TOOL_TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert {rel: (root / rel).read_text() for rel in expected} == expected
    assert not (root / "proc").exists()


# --- systemd-analyze verify ------------------------------------------------------------------------
def _verify(tool: str, units: Path, service: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"}
    return subprocess.run(
        [tool, "verify", "--man=no", str(units / service)],
        capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, env=env,
    )  # fmt: skip


def test_systemd_analyze_accepts_the_drop_in(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed: the drop-in was only parsed as an INI file")
    units = tmp_path / "units"
    service = "kloros-test-workload.service"
    units.mkdir()
    true = shutil.which("true") or "/bin/true"
    (units / service).write_text(f"[Unit]\nDescription=stub\n\n[Service]\nExecStart={true}\n")
    alone = _verify(tool, units, service)
    if alone.returncode != 0 or alone.stderr.strip():
        pytest.skip(f"systemd-analyze verify does not work here: {alone.stderr.strip()[-200:]}")
    (drop_in,) = export(_subject("cpu", CPU_DOMAIN), "systemd", units, unit=service)
    assert drop_in.parent == units / f"{service}.d"
    proc = _verify(tool, units, service)
    assert (proc.returncode, proc.stderr) == (0, "")
    # The same check catches a bad directive in that drop-in: it does read the file.
    drop_in.write_text(drop_in.read_text() + "CPUSchedulingPolicy=sometimes\n")
    bad = _verify(tool, units, service)
    assert drop_in.name in bad.stderr and "sometimes" in bad.stderr
