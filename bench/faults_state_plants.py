"""Planted faults of the ``state`` class (see ``faults_state.py``): what a state file is replaced by.

A plant is ``plant(sandbox)``: it changes the sandbox's copy of the template state directory (or its
temporary sysfs tree) in one way. Content faults, random mutations of the real documents, valid JSON
of the wrong shape, journal entries that attack the host, nodes of the wrong type, permissions.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faults_lib import DOMAIN, STOCK, Sandbox, short

Plant = Callable[[Sandbox], None]
PathOf = Callable[[Sandbox], Path]


# --- paths of the targets ----------------------------------------------------------------------------


def knob_path(sb: Sandbox) -> str:
    return str(sb.knob.absolute())


def journal_file(sb: Sandbox, key: str) -> Path:
    return sb.state / "journal" / (hashlib.sha1(key.encode()).hexdigest() + ".json")


def pack_file(sb: Sandbox) -> Path:
    packs = sorted((sb.state / "artifacts" / "candidates" / DOMAIN).glob("gen*_best.json"))
    return packs[0] if packs else sb.state / "artifacts" / "candidates" / DOMAIN / "gen0_best.json"


def results_file(sb: Sandbox) -> Path:
    latest = sb.state / "phase" / "latest"
    return (
        (sb.state / "phase" / os.readlink(latest) / "phase_results.json")
        if latest.is_symlink()
        else (sb.state / "phase" / "x" / "phase_results.json")
    )


def entry(sb: Sandbox, **fields: Any) -> dict[str, Any]:
    base = {
        "path": knob_path(sb),
        "original": STOCK,
        "domain": DOMAIN,
        "knob": "level",
        "domains": [DOMAIN],
        "seq": 1,
    }
    return {**base, **fields}


def load_doc(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# --- plants: content of a file -----------------------------------------------------------------------


def _replace(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)


def put_bytes(path_of: Callable[[Sandbox], Path], data: bytes) -> Plant:
    def plant(sb: Sandbox) -> None:
        p = path_of(sb)
        _replace(p)
        p.write_bytes(data)

    return plant


Base = Callable[[Sandbox], Any]  # the document of a file the template does not hold (a journal entry)


def put_doc(path_of: PathOf, make: Callable[[Sandbox, Any], Any], base: Base | None = None) -> Plant:
    """Replace the file by ``make(sandbox, its current document)`` as JSON (NaN tokens allowed)."""

    def plant(sb: Sandbox) -> None:
        p = path_of(sb)
        doc = load_doc(p) if p.is_file() else (base(sb) if base is not None else {})
        new = make(sb, doc)
        _replace(p)
        p.write_text(json.dumps(new, allow_nan=True))

    return plant


def put_node(path_of: Callable[[Sandbox], Path], kind: str, to: str = "") -> Plant:
    """Replace the file by a node of another type: dir, fifo, file, or a symlink to ``to``."""

    def plant(sb: Sandbox) -> None:
        p = path_of(sb)
        _replace(p)
        if kind == "dir":
            p.mkdir()
            (p / "x.json").write_text("{}")
        elif kind == "fifo":
            os.mkfifo(p)
        elif kind == "file":
            p.write_text("not a directory\n")
        elif kind == "symlink":
            os.symlink(to.replace("@OUT", str(sb.outside)), p)

    return plant


def content_plants(
    rng: random.Random, path_of: PathOf, n: int, base: Base | None = None
) -> list[tuple[str, Plant]]:
    """``n`` generated content faults for one file."""
    kinds: list[tuple[str, Callable[[], Plant]]] = [
        ("nested 20000 deep", lambda: put_bytes(path_of, b"[" * 20000 + b"]" * 20000)),
        ("nested 100000 deep", lambda: put_bytes(path_of, b'{"a":' * 100000 + b"1" + b"}" * 100000)),
        ("symlink to /dev/zero", lambda: put_node(path_of, "symlink", "/dev/zero")),
        ("symlink to /dev/urandom", lambda: put_node(path_of, "symlink", "/dev/urandom")),
        ("a FIFO", lambda: put_node(path_of, "fifo")),
        ("a directory", lambda: put_node(path_of, "dir")),
        ("a dangling symlink", lambda: put_node(path_of, "symlink", "@OUT/nonexistent")),
        ("empty", lambda: put_bytes(path_of, b"")),
        ("20 MB string", lambda: put_bytes(path_of, b'{"x": "' + b"a" * (20 << 20) + b'"}')),
    ]
    out = [(name, make()) for name, make in rng.sample(kinds, min(n, len(kinds)))]
    for _ in range(max(0, n - len(kinds))):
        size = rng.choice([1, 7, 100, 4096, 1 << 16])
        data = bytes(rng.randrange(256) for _ in range(size))
        out.append((f"{size} random bytes", put_bytes(path_of, data)))
    out.append(("truncated", _truncated(path_of, rng.random(), base)))
    return out


def _truncated(path_of: PathOf, frac: float, base: Base | None) -> Plant:
    def plant(sb: Sandbox) -> None:
        p = path_of(sb)
        data = p.read_bytes() if p.is_file() else json.dumps(base(sb) if base else {"a": [1, 2, 3]}).encode()
        p.write_bytes(data[: max(1, int(len(data) * frac))])

    return plant


_WRONG: tuple[Any, ...] = (
    "x",
    "",
    -1,
    0,
    1e300,
    -1e300,
    float("nan"),
    float("inf"),
    True,
    None,
    [],
    {},
    [1, "a"],
    {"k": "v"},
    10**30,
    "7",
)


def _mutate_doc(doc: Any, rng: random.Random) -> tuple[Any, str]:
    """``doc`` with one random leaf (or sub-tree) replaced by a value of another type."""
    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, at: tuple[Any, ...]) -> None:
        if at:
            paths.append(at)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*at, k))
        elif isinstance(node, list):
            for i, v in enumerate(node[:3]):
                walk(v, (*at, i))

    walk(doc, ())
    if not paths:
        return rng.choice(_WRONG), "whole document"
    at = rng.choice(paths)
    value = rng.choice(_WRONG)
    node = doc
    for k in at[:-1]:
        node = node[k]
    node[at[-1]] = value
    return doc, f"{'.'.join(map(str, at))} = {short(repr(value), 24)}"


def mutation_plants(
    rng: random.Random, path_of: PathOf, template_doc: Any, n: int, base: Base | None = None
) -> list[tuple[str, Plant]]:
    out = []
    for _ in range(n):
        seed = rng.random()
        _, what = _mutate_doc(json.loads(json.dumps(template_doc)), random.Random(seed))

        def make(sb: Sandbox, doc: Any, seed: float = seed) -> Any:
            return _mutate_doc(doc, random.Random(seed))[0]

        out.append((f"mutated: {what}", put_doc(path_of, make, base)))
    return out


# --- plants: valid JSON of the wrong shape -----------------------------------------------------------


def _with(doc: Any, dotted: str, value: Any) -> Any:
    if not isinstance(doc, dict):
        doc = {}
    node = doc
    *parents, leaf = dotted.split(".")
    for p in parents:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    node[leaf] = value
    return doc


def _hof(generation: Any = "3", genome: Any = None, score: Any = 1e308) -> list[dict[str, Any]]:
    return [
        {
            "cand_id": "x",
            "spica_id": "y",
            "genome": genome or {"level": "high"},
            "generation": generation,
            "score": score,
        }
    ]


SHAPES: dict[str, list[tuple[str, Any]]] = {
    "state.json": [
        ("open_window: {}", ("open_window", {})),
        ("last_opened_start: 1e300", ("last_opened_start", 1e300)),
        ("last_opened_start: -1e300", ("last_opened_start", -1e300)),
        ("first_seen: 1e300", ("first_seen", 1e300)),
        ("first_seen: a string", ("first_seen", "yesterday")),
        ("string generation", (f"engines.{DOMAIN}.generation", "7")),
        ("generation 10^30", (f"engines.{DOMAIN}.generation", 10**30)),
        ("hall of fame with string generation and genome", (f"engines.{DOMAIN}.hall_of_fame", _hof())),
        ("engine snapshot without fields", (f"engines.{DOMAIN}.engine", {"schema": "evolution.v1"})),
        ("engine space a string", (f"engines.{DOMAIN}.engine.space", "x")),
        ("domain_index 10^30", ("domain_index", 10**30)),
        ("domain_index -1", ("domain_index", -1)),
        ("open window until 1e300", ("open_window", {"window_id": "w", "start": 0, "end": 1e300})),
        ("durations 1e308/-5/x", (f"engines.{DOMAIN}.durations", [1e308, -5, "x"])),
        ("engines.fx a list", (f"engines.{DOMAIN}", [])),
        ("a JSON list", ("@", [])),
        ("a JSON string", ("@", "s")),
        ("JSON null", ("@", None)),
    ],
    "candidate pack": [
        ("string generation", ("generation", "7")),
        ("generation 1e300", ("generation", 1e300)),
        ("genome level a string", ("genome", {"level": "zz"})),
        ("genome unknown knob", ("genome", {"nope": 1})),
        ("score 1e308, safe", ("aggregate.score_v2", 1e308)),
        ("score CI inverted", ("aggregate.score_ci95", [5, -5])),
        ("regimes a string", ("regimes", "x")),
        ("schema v9", ("schema", "candidate_pack.v9")),
        ("domain ../../etc", ("domain", "../../etc")),
        ("cand_id a number", ("cand_id", 5)),
        ("a JSON list", ("@", [])),
    ],
    "baselines.json": [
        ("kpi a string", (f"{DOMAIN}.idle.kpis.score", "x")),
        (f"{DOMAIN}: []", (DOMAIN, [])),
        ("kpi -1e308", (f"{DOMAIN}.idle.kpis.score", -1e308)),
        ("CI inverted", (f"{DOMAIN}.idle.ci95.score", [9, 1])),
        ("trials -1", (f"{DOMAIN}.idle.trials", -1)),
        ("schema missing", ("schema", None)),
        ("regime null", (f"{DOMAIN}.idle", None)),
        ("a JSON list", ("@", [])),
    ],
    "phase results": [
        ("run_id ../../x", ("run_id", "../../x")),
        ("complete a string", ("complete", "yes")),
        ("fitness a string", (f"metrics.{DOMAIN}.fitness", "x")),
        ("qtime epochs -1", ("qtime.epochs", -1)),
        ("promoted genome a string", ("promoted_variants", [{"genome": {"level": "zz"}}])),
        ("timestamp 1e300", ("timestamp", 1e300)),
        (
            "recommendation low 1e308 > high",
            ("search_space_recommendations", {DOMAIN: {"level": {"low": 1e308, "high": -1}}}),
        ),
        ("a JSON list", ("@", [])),
    ],
    "journal entry": [
        ("path a number", ("path", 5)),
        ("original a number", ("original", 5)),
        ("seq a string", ("seq", "x")),
        ("path empty", ("path", "")),
        ("path relative", ("path", "relative/knob")),
        ("restore_argv a string", ("restore_argv", "touch x")),
        ("restore_argv []", ("restore_argv", [])),
        ("restore_argv a missing program", ("restore_argv", ["/nonexistent/prog"])),
        ("original 10 MB", ("original", "5" * (10 << 20))),
        ("a JSON list", ("@", [])),
    ],
}


def shape_plant(path_of: Callable[[Sandbox], Path], target: str, spec: Any) -> Plant:
    dotted, value = spec
    if dotted == "@":
        return put_doc(path_of, lambda sb, doc: value)
    if target == "journal entry":
        return put_doc(path_of, lambda sb, doc: _with(entry(sb), dotted, value))
    return put_doc(path_of, lambda sb, doc: _with(doc, dotted, value))


# --- plants: journal attacks, node types, permissions -----------------------------------------------


def put_entry(
    name_of: Callable[[Sandbox], str],
    make: Callable[[Sandbox], dict[str, Any]],
    setup: Callable[[Sandbox], None] | None = None,
) -> Plant:
    def plant(sb: Sandbox) -> None:
        if setup is not None:
            setup(sb)
        entry_doc = make(sb)
        name = name_of(sb)
        p = sb.state / "journal" / name if name.endswith(".json") else journal_file(sb, entry_doc["path"])
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(entry_doc))

    return plant


def _evil_link(sb: Sandbox) -> None:
    os.symlink(sb.outside / "victim.txt", sb.knob.parent / "evil")


def attack_plants() -> list[tuple[str, Plant, bool]]:
    """(name, plant, is a control that must restore the knob)."""
    touch_sh = lambda sb: ["/bin/sh", "-c", f"touch '{sb.marker}'"]  # noqa: E731
    by_hash = lambda sb: ""  # noqa: E731
    victim = lambda sb: str(sb.outside / "victim.txt")  # noqa: E731
    return [
        (
            "restore_argv sh -c touch, command key",
            put_entry(
                by_hash, lambda sb: entry(sb, path="nvidia-smi:gpu0:power_limit_w", restore_argv=touch_sh(sb))
            ),
            False,
        ),
        (
            "restore_argv sh -c touch, knob path",
            put_entry(by_hash, lambda sb: entry(sb, restore_argv=touch_sh(sb))),
            False,
        ),
        (
            "restore_argv touch",
            put_entry(by_hash, lambda sb: entry(sb, path="x:y", restore_argv=["touch", str(sb.marker)])),
            False,
        ),
        (
            "restore_argv python -c",
            put_entry(
                by_hash,
                lambda sb: entry(
                    sb, path="x:z", restore_argv=[sys.executable, "-c", f"open({str(sb.marker)!r}, 'w')"]
                ),
            ),
            False,
        ),
        (
            "path outside sysfs_root",
            put_entry(by_hash, lambda sb: entry(sb, path=victim(sb), original="PWNED")),
            False,
        ),
        (
            "path ../ out of sysfs_root",
            put_entry(
                by_hash,
                lambda sb: entry(
                    sb, path=str(sb.wd / "sys" / ".." / "outside" / "victim.txt"), original="PWNED"
                ),
            ),
            False,
        ),
        (
            "path through a symlink in sysfs_root",
            put_entry(
                by_hash, lambda sb: entry(sb, path=str(sb.knob.parent / "evil"), original="PWNED"), _evil_link
            ),
            False,
        ),
        (
            "entry under another name, outside path",
            put_entry(lambda sb: "evil.json", lambda sb: entry(sb, path=victim(sb), original="PWNED")),
            False,
        ),
        (
            "restore text to an outside path",
            put_entry(by_hash, lambda sb: entry(sb, path=victim(sb), restore="PWNED")),
            False,
        ),
        ("control: crash left the knob at 77", put_entry(by_hash, lambda sb: entry(sb), _knob77), True),
    ]


def _knob77(sb: Sandbox) -> None:
    sb.knob.write_text("77\n")


def in_state(rel: str) -> Callable[[Sandbox], Path]:
    return lambda sb: sb.state / rel


NODES: list[tuple[str, str, str]] = [
    ("lock", "dir", ""),
    ("lock", "fifo", ""),
    ("lock", "symlink", "/dev/zero"),
    ("lock", "symlink", "@OUT/victim.txt"),
    ("lock", "symlink", "@OUT/nonexistent"),
    ("journal", "file", ""),
    ("journal", "symlink", "@OUT/dir"),
    ("tmp", "file", ""),
    ("tmp", "symlink", "@OUT/dir"),
    ("logs", "file", ""),
    ("logs", "symlink", "@OUT/dir"),
    ("logs/events.jsonl", "dir", ""),
    ("logs/events.jsonl", "fifo", ""),
    ("logs/events.jsonl", "symlink", "@OUT/victim.txt"),
    ("logs/events.jsonl", "symlink", "/dev/zero"),
    ("logs/daemon.log", "dir", ""),
    ("logs/daemon.log", "fifo", ""),
    ("logs/daemon.log", "symlink", "@OUT/victim.txt"),
    ("logs/trials.jsonl", "symlink", "@OUT/victim.txt"),
    ("logs/trials.jsonl", "dir", ""),
    ("artifacts", "file", ""),
    ("phase", "file", ""),
    ("scratch", "symlink", "@OUT/dir"),
    ("state.json", "symlink", "@OUT/victim.txt"),
    ("artifacts/baselines.json", "symlink", "@OUT/victim.txt"),
    ("phase/latest", "symlink", "/dev/zero"),
    ("phase/latest", "symlink", "latest"),
    ("phase/latest", "symlink", "@OUT/dir"),
]


def perm_plants() -> list[tuple[str, Plant]]:
    def chown(rel: str, uid: int, mode: int | None = None) -> Plant:
        def plant(sb: Sandbox) -> None:
            p = sb.state / rel if rel else sb.state
            os.chown(p, uid, uid)
            if mode is not None:
                p.chmod(mode)

        return plant

    def attack_in_open_journal(sb: Sandbox) -> None:
        (sb.state / "journal").chmod(0o777)
        put_entry(lambda s: "", lambda s: entry(s, path=str(s.outside / "victim.txt"), original="PWNED"))(sb)
        for f in (sb.state / "journal").glob("*.json"):
            os.chown(f, 65534, 65534)

    return [
        ("state_dir owned by uid 65534", chown("", 65534)),
        ("state_dir mode 0777", chown("", 0, 0o777)),
        ("state_dir group-writable 0775", chown("", 0, 0o775)),
        ("state_dir other-writable 0757", chown("", 0, 0o757)),
        ("journal owned by uid 65534", chown("journal", 65534)),
        ("journal mode 0777", chown("journal", 0, 0o777)),
        ("state.json owned by 65534, 0666", chown("state.json", 65534, 0o666)),
        ("foreign outside-path entry in a 0777 journal", attack_in_open_journal),
    ]
