"""Fault class ``config``: hostile dream.yaml / regimes / caps through ``validate`` and ``run --once``.

Survived: ``validate`` and ``run`` both exit 2 and every stderr line of theirs reads
``file: key: problem`` (no traceback); or, for an input that is valid, ``validate`` exits 0 and
``run --once`` runs clean (exit 0). An input the campaign knows to be invalid (10^30 counts, NaN
durations, NUL bytes in paths, ...) must be refused; for random mutations either outcome is fine.
"""

from __future__ import annotations

import copy
import random
import re
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from faults_lib import DOMAIN, Case, Result, Sandbox, Verdict, fail, has_traceback, ok, short

CLS = "config"
_PROBLEM = re.compile(r"^(?:environment|/\S[^:]*): [^:].*?: .+")

# Every count of the contract and where it lives.
COUNTS = (
    "dream.population",
    "dream.epochs_per_cycle",
    "dream.max_parallel",
    "dream.trials",
    "dream.min_trials",
    "dream.elite",
    "phase.qtime.epochs",
    "phase.qtime.slices",
    "phase.qtime.replicas",
    "phase.qtime.min_replicas",
    "phase.max_variants",
    "bootstrap_samples",
    "seed",
)
DURATIONS = (
    "dream.trial_seconds",
    "phase.trial_seconds",
    "phase.window.duration",
    "dream.pacing.min_sleep_s",
    "dream.pacing.max_sleep_s",
)
PATH_KEYS = ("state_dir", "socket", "sysfs_root", "regimes_dir", "caps_dir", "timezone", "log_level")


# --- one input -------------------------------------------------------------------------------------


Edit = Callable[[Sandbox], dict[str, str] | None]  # writes the input into the sandbox; returns env
Inputs = list[tuple[str, Edit, str | None]]  # (name, edit, expected: "valid" / "invalid" / None)


def _problem_lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.strip()]


RUN_S, STOP_S = 20.0, 10.0


def run_once_bounded(sb: Sandbox, env: dict[str, str] | None) -> tuple[Result, bool]:
    """``run --once``; still running after ``RUN_S`` (a valid config with a slow workload): SIGTERM,
    which a working daemon answers with exit 0. Returns the result and whether it was stopped."""
    t0 = time.monotonic()
    proc = sb.spawn(["run", "--config", str(sb.cfg), "--once"], env)
    try:
        proc.wait(timeout=RUN_S)
    except subprocess.TimeoutExpired:
        return sb.stop(proc, timeout=STOP_S), True
    return sb.finish(proc, 1.0, t0), False


def check_config(sb: Sandbox, edit: Edit, expect: str | None) -> Verdict:
    """``validate`` then ``run --once`` on the edited sandbox; ``expect`` is "valid", "invalid" or None."""
    sb.setup()
    env = edit(sb)
    v = sb.cli(["validate", "--config", str(sb.cfg)], 15.0, env)
    if v.hung:
        return fail("validate hang (killed after 15 s)")
    if has_traceback(v.err + v.out):
        return fail(f"validate traceback: {v.last_line()}")
    r, stopped = run_once_bounded(sb, env)
    if r.hung:
        return fail(f"run hang (no exit {RUN_S:.0f} s after start nor {STOP_S:.0f} s after SIGTERM; "
                    f"validate exit {v.rc})")  # fmt: skip
    if v.rc == 0:
        if expect == "invalid":
            return fail(f"validate accepts an invalid input (run exit {r.rc})")
        if r.rc != 0:
            return fail(
                f"validate ok but run {r.describe()}"
                + (f" after SIGTERM at {RUN_S:.0f} s" if stopped else "")
            )
        if has_traceback(r.err):
            return fail(f"valid input: run exit 0 with a traceback: {r.last_line()}")
        return ok(
            "valid: clean run" + (f" (still working at {RUN_S:.0f} s; SIGTERM → exit 0)" if stopped else "")
        )
    if v.rc != 2:
        return fail(f"validate {v.describe()}")
    if expect == "valid":
        return fail(f"validate refuses a valid input: {v.last_line()}")
    bad = [x for x in _problem_lines(v.err) if not _PROBLEM.match(x)]
    if bad or not _problem_lines(v.err):
        return fail(f"validate exit 2, not 'file: key: problem': {short(bad[0] if bad else '(nothing)')}")
    if r.rc != 2:
        return fail(f"validate exit 2 but run {r.describe()}")
    if has_traceback(r.err):
        return fail(f"run traceback: {r.last_line()}")
    bad = [x for x in _problem_lines(r.err) if not _PROBLEM.match(x)]
    if bad:
        return fail(f"run exit 2, not 'file: key: problem': {short(bad[0])}")
    return ok(f"refused: {short(_problem_lines(v.err)[0], 90)}")


# --- edits -------------------------------------------------------------------------------------------


def _set(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    node = cfg
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def with_value(dotted: str, value: Any) -> Edit:
    def edit(sb: Sandbox) -> None:
        cfg = sb.config()
        _set(cfg, dotted, value)
        sb.write_config(cfg)

    return edit


def with_yaml(dotted: str, raw: str) -> Edit:
    """Put ``raw`` YAML text (not representable by safe_dump: aliases, .nan, deep flow) at ``dotted``."""

    def edit(sb: Sandbox) -> None:
        cfg = sb.config()
        _set(cfg, dotted, "@@RAW@@")
        text = yaml.safe_dump(cfg, sort_keys=False, width=1 << 30)
        sb.write_config(text.replace("'@@RAW@@'", raw))

    return edit


def with_anchors(anchors: str, dotted: str, raw: str) -> Edit:
    """``raw`` at ``dotted``, its anchors defined first in the file under a free-form key (a generic
    domain's ``description``), so that the document has no key the schema does not know."""

    def edit(sb: Sandbox) -> None:
        cfg = sb.config()
        cfg = {"domain_options": cfg.pop("domain_options"), **cfg}  # anchors before any alias
        fx = cfg["domain_options"][DOMAIN]
        cfg["domain_options"][DOMAIN] = {"description": "@@ANCHORS@@", **fx}
        if dotted != f"domain_options.{DOMAIN}.description":
            _set(cfg, dotted, "@@RAW@@")
        text = yaml.safe_dump(cfg, sort_keys=False, width=1 << 30)
        sb.write_config(text.replace("'@@ANCHORS@@'", anchors).replace("'@@RAW@@'", raw))

    return edit


def with_bytes(make: Callable[[Sandbox, bytes], bytes]) -> Edit:
    def edit(sb: Sandbox) -> None:
        sb.write_config(sb.config())
        sb.cfg.write_bytes(make(sb, sb.cfg.read_bytes()))

    return edit


def with_file(rel: str, text: str | bytes) -> Edit:
    """Replace a regimes/caps file of the sandbox."""

    def edit(sb: Sandbox) -> None:
        p = sb.wd / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())

    return edit


def with_env(value: str) -> Edit:
    def edit(sb: Sandbox) -> dict[str, str]:
        return {"KLR_DREAM_TRIALS": value}

    return edit


def with_state_dir(name: str) -> Edit:
    def edit(sb: Sandbox) -> None:
        cfg = sb.config()
        cfg["state_dir"] = str(sb.wd / name)
        sb.write_config(cfg)

    return edit


# --- generators ---------------------------------------------------------------------------------------


def alias_bomb(levels: int, fanout: int) -> tuple[str, str]:
    """(a flow list defining the anchors of a billion-laughs document, the alias of its top level)."""
    parts = ['&a0 ["lol"]']
    for i in range(1, levels + 1):
        parts.append(f"&a{i} [{', '.join([f'*a{i - 1}'] * fanout)}]")
    return "[" + ", ".join(parts) + "]", f"*a{levels}"


def gen_alias_bombs(rng: random.Random, n: int) -> Inputs:
    spots = [
        ("dream.domains", "invalid"),
        ("seed", "invalid"),
        ("phase.window.start", "invalid"),
        (f"domain_options.{DOMAIN}.description", None),
        (f"domain_options.{DOMAIN}.knobs", "invalid"),
        ("domain_options.zz", "invalid"),
        (f"domain_options.{DOMAIN}.kpis", "invalid"),
    ]
    out: Inputs = []
    for _ in range(n):
        levels, fanout = rng.randint(6, 10), rng.randint(6, 10)
        spot, expect = rng.choice(spots)
        anchors, ref = alias_bomb(levels, fanout)
        out.append((f"alias-bomb {fanout}^{levels} at {spot}", with_anchors(anchors, spot, ref), expect))
    return out


def gen_deep(rng: random.Random, n: int) -> Inputs:
    out = []
    for _ in range(n):
        depth = rng.choice([1000, 5000, 20000, 20000, 60000])
        style = rng.choice(["list", "map"])
        raw = "[" * depth + "]" * depth if style == "list" else "{a: " * depth + "1" + "}" * depth
        spot, expect = rng.choice(
            [
                ("dream.domains", "invalid"),
                ("zz_unknown", "invalid"),
                ("phase.qtime", "invalid"),
                (f"domain_options.{DOMAIN}.description", None),
            ]
        )
        out.append((f"nesting {depth} deep ({style}) at {spot}", with_yaml(spot, raw), expect))
    out.append(
        ("whole file nested 20000 deep", with_bytes(lambda sb, b: b"[" * 20000 + b"]" * 20000), "invalid")
    )
    return out


def gen_numbers(rng: random.Random, n: int) -> Inputs:
    huge = {
        "10**30": 10**30,
        "2**63": 2**63,
        "2**64": 2**64,
        "-(2**63)-1": -(2**63) - 1,
        "10**400": 10**400,
        "-(10**30)": -(10**30),
    }
    out = []
    for _ in range(n):
        key, expr = rng.choice(COUNTS), rng.choice(sorted(huge))
        out.append((f"{key} = {expr}", with_yaml(key, str(huge[expr])), "invalid"))
    out.append(("seed with 5000 digits", with_yaml("seed", "9" * 5000), "invalid"))
    return out


def gen_inf_nan(rng: random.Random, n: int) -> Inputs:
    values = [".inf", "-.inf", ".nan", ".NaN", "1.0e+400", "-1.0e+400"]
    starts = ["now+1e999", "now+nan", "now+inf", "now+-5", "now+" + "9" * 30, "99:99", "03:00\0"]
    out = []
    for _ in range(n):
        if rng.random() < 0.75:
            key, val = rng.choice(DURATIONS), rng.choice(values)
            out.append((f"{key} = {val}", with_yaml(key, val), "invalid"))
        else:
            val = rng.choice(starts)
            out.append((f"phase.window.start = {val!r}", with_value("phase.window.start", val), "invalid"))
    return out


def gen_nul_paths(rng: random.Random, n: int) -> Inputs:
    out = []
    for _ in range(n):
        key = rng.choice(PATH_KEYS)
        pos = rng.choice(["start", "middle", "end"])
        val = {"start": "\0/tmp/x", "middle": "/tmp/a\0b", "end": "/tmp/x\0"}[pos]
        out.append((f"NUL byte in {key} ({pos})", with_value(key, val), "invalid"))
    return out


def gen_odd_state_dirs(rng: random.Random, n: int) -> Inputs:
    names = [
        "st ate",
        "{state}",
        "st {a} te",
        "%s%n%x",
        "$(touch MARKER)",
        "`touch MARKER`",
        "*?[x]",
        "état ✓",
        "-rf",
        "a\nb",
        "x" * 200,
        "sp ace/{b}/c c",
        "'q\"",
        ";ls;",
    ]
    picks = names[:] if n >= len(names) else rng.sample(names, n)
    return [(f"state_dir {name!r}", with_state_dir(name), None) for name in picks]


def gen_non_utf8(rng: random.Random, n: int) -> Inputs:
    def insert(blob: bytes) -> Callable[[Sandbox, bytes], bytes]:
        def make(sb: Sandbox, text: bytes) -> bytes:
            at = rng.randrange(len(text))
            return text[:at] + blob + text[at:]

        return make

    blobs = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80\x80", b"\xfe\xff", b"# caf\xe9\n"]
    out: Inputs = []
    for _ in range(n):
        if rng.random() < 0.2:
            rnd = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
            out.append((f"{len(rnd)} random bytes inserted", with_bytes(insert(rnd)), None))
        else:
            blob = rng.choice(blobs)
            out.append((f"non-UTF-8 {blob!r} inserted", with_bytes(insert(blob)), "invalid"))
    out.append(("UTF-16 file with BOM", with_bytes(lambda sb, b: b.decode().encode("utf-16")), None))
    out.append(
        (
            "latin-1 value",
            with_bytes(lambda sb, b: b.replace(b"seed: 7", b"seed: 7\nlog_level: \xe9")),
            "invalid",
        )
    )
    return out


def gen_env(rng: random.Random, n: int) -> Inputs:
    values = [
        ("1e30", "invalid"),
        ("-1", "invalid"),
        ("0", "invalid"),
        ("nan", "invalid"),
        ("9" * 40, "invalid"),
        ("0x10", "invalid"),
        (" 2 ", None),
        ("\u0663", None),
        ("", "invalid"),
    ]
    picks = values if n >= len(values) else rng.sample(values, n)
    return [(f"KLR_DREAM_TRIALS={v!r}", with_env(v), e) for v, e in picks]


def gen_side_files(rng: random.Random, n: int) -> Inputs:
    anchors, _ref = alias_bomb(9, 9)
    reg = "regimes/" + DOMAIN + ".yaml"
    one = "{duration: %s, stressors: [{name: cpu, instances: %s}]}"
    rest = "".join(f"{r}: {one % (1, 1)}\n" for r in ("normal", "stress", "mixed"))
    files = [
        ("regimes alias bomb", reg, f"idle: {anchors}\n{rest}"),
        (
            "regimes duration .inf",
            reg,
            "".join(f"{r}: {one % ('.inf', 1)}\n" for r in ("idle", "normal", "stress", "mixed")),
        ),
        (
            "regimes duration .nan",
            reg,
            "".join(f"{r}: {one % ('.nan', 1)}\n" for r in ("idle", "normal", "stress", "mixed")),
        ),
        (
            "regimes instances 10^30",
            reg,
            "".join(f"{r}: {one % (1, 10**30)}\n" for r in ("idle", "normal", "stress", "mixed")),
        ),
        ("regimes nested 20000 deep", reg, "idle: " + "[" * 20000 + "]" * 20000 + "\n"),
        ("regimes non-UTF-8", reg, b"idle: \xff\xfe\n"),
        ("caps limit .nan", "caps/" + DOMAIN + ".yaml", "score: .nan\n"),
        ("caps on an unknown KPI", "caps/" + DOMAIN + ".yaml", "no_such_kpi: 5\n"),
        ("caps nested 20000 deep", "caps/" + DOMAIN + ".yaml", "score: " + "[" * 20000 + "]" * 20000 + "\n"),
    ]
    picks = files if n >= len(files) else rng.sample(files, n)
    out: Inputs = []
    for name, rel, text in picks:
        edit = with_file(rel, text)
        if rel.startswith("caps/"):
            edit = _and_caps_dir(edit)
        out.append((name, edit, "invalid"))
    return out


def _and_caps_dir(inner: Edit) -> Edit:
    def edit(sb: Sandbox) -> None:
        inner(sb)
        cfg = sb.config()
        cfg["caps_dir"] = str(sb.wd / "caps")
        sb.write_config(cfg)

    return edit


_WRONG: tuple[Any, ...] = (
    "text",
    "",
    "12abc",
    -1,
    0,
    3,
    1.5,
    -2.5,
    True,
    False,
    None,
    [],
    [1, "a"],
    {},
    {"k": "v"},
    10**30,
    "1h",
    "now+5",
    "03:00",
    "\u202e",
    "x" * 5000,
)


def _leaves(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix]
    out = [prefix] if prefix else []
    for k, v in node.items():
        out += _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def _mutate(rng: random.Random, cfg: dict[str, Any]) -> str:
    """One random mutation of ``cfg`` in place; returns what it did."""
    spot = rng.choice(_leaves(cfg))
    *parents, leaf = spot.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    op = rng.choice(["type", "type", "type", "unknown", "delete", "rename"])
    if op == "type":
        value = copy.deepcopy(rng.choice(_WRONG))
        node[leaf] = value
        return f"{spot} = {short(repr(value), 30)}"
    if op == "unknown":
        target = node[leaf] if isinstance(node[leaf], dict) else node
        key = rng.choice(["colour", "Population", "state-dir", "__class__", "", "1", "dream"])
        target[key] = rng.choice(_WRONG)
        return f"unknown key {key!r} beside {spot}"
    if op == "delete":
        del node[leaf]
        return f"{spot} deleted"
    node[leaf.upper() if leaf.islower() else leaf + "_"] = node.pop(leaf)
    return f"{spot} renamed"


def _apply_mutations(sb: Sandbox, seed: float, k: int) -> None:
    r = random.Random(seed)
    cfg = sb.config()
    for _ in range(k):
        _mutate(r, cfg)
    sb.write_config(cfg)


def gen_mutations(rng: random.Random, n: int) -> Inputs:
    out: Inputs = []
    for _ in range(n):
        seed, k = rng.random(), rng.choice([1, 1, 1, 2, 3])
        # The mutations depend on the config's keys only: replaying them on a look-alike describes them.
        shadow, r = Sandbox(Path("/sandbox")).config(), random.Random(seed)
        what = "; ".join(_mutate(r, shadow) for _ in range(k))
        out.append((f"mutation: {what}", partial(_apply_mutations, seed=seed, k=k), None))
    return out


# --- the class ---------------------------------------------------------------------------------------

# generator, share of the inputs in a full run, minimum per run
_GENERATORS: tuple[tuple[Callable[[random.Random, int], Inputs], float, int], ...] = (
    (gen_alias_bombs, 0.08, 2),
    (gen_deep, 0.08, 2),
    (gen_numbers, 0.12, 2),
    (gen_inf_nan, 0.12, 2),
    (gen_nul_paths, 0.08, 1),
    (gen_odd_state_dirs, 0.10, 1),
    (gen_non_utf8, 0.08, 1),
    (gen_env, 0.06, 1),
    (gen_side_files, 0.08, 1),
    (gen_mutations, 0.20, 2),
)


def cases(rng: random.Random, total: int) -> list[Case]:
    out = []
    for gen, share, least in _GENERATORS:
        for name, edit, expect in gen(rng, max(least, round(share * total))):
            out.append(Case(CLS, name, partial(check_config, edit=edit, expect=expect), 60.0))
    return out
