"""Fault classes ``signals`` and ``stressng``: the daemon's processes under hostile conditions.

``signals``: bursts of SIGTERM/SIGINT/SIGHUP at random moments (during start-up, mid-trial with a
real stress-ng running, while stopping). Survived: exit 0 (130 is accepted when the burst holds a
second SIGINT), within 20 s, no traceback, no stress-ng of the case left, knob at its stock value.

``stressng``: a fake ``stress-ng`` first on PATH (a generated shell script that answers
``--version`` like the real one) that exits 1–7, hangs (with SIGTERM ignored or not), writes
garbage YAML, negative / NaN / overflowing bogo-ops, daemonises a child with setsid, floods its
output, ... Survived: the trials fail with a reason in ``logs/trials.jsonl`` (and no trial is ``ok``
with a negative, null or non-finite KPI), the daemon keeps running and exits 0 on SIGTERM (a fake
whose ``--version`` is broken: exit 3 with one line), and no process of the fake is left behind.
"""

from __future__ import annotations

import math
import os
import random
import signal
import time
from functools import partial
from typing import Any

import psutil
from faults_lib import (
    STOCK,
    Case,
    Result,
    Sandbox,
    Verdict,
    error_lines,
    fail,
    has_traceback,
    log_summary,
    ok,
    read_jsonl,
    short,
    tagged,
)

SIGS = {"TERM": signal.SIGTERM, "INT": signal.SIGINT, "HUP": signal.SIGHUP}


# --- signals -----------------------------------------------------------------------------------------


def _wait_stress(sb: Sandbox, proc: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        for p in tagged(sb.tag):
            try:
                if p.name() == "stress-ng":
                    return True
            except psutil.Error:  # gone meanwhile
                continue
        time.sleep(0.02)
    return False


def check_signals(sb: Sandbox, moment: str, delay: float, burst: list[tuple[str, float]]) -> Verdict:
    sb.setup(workload="stressors", probe=True, trials=1, min_trials=1)
    proc = sb.start_daemon()
    if moment == "mid-trial" and not _wait_stress(sb, proc, 30.0):
        r = sb.stop(proc)
        return fail(f"no stress-ng trial started within 30 s ({r.describe()})")
    if moment == "while stopping":
        _wait_stress(sb, proc, 30.0)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGTERM)
        delay = 0.05 + delay / 4
    time.sleep(delay)
    t0 = time.monotonic()
    for name, gap in burst:
        try:
            os.kill(proc.pid, SIGS[name])
        except ProcessLookupError:
            break
        time.sleep(gap)
    r = sb.finish(proc, 20.0, t0)
    allowed = {0, 130} if [n for n, _ in burst].count("INT") >= 2 else {0}
    if r.hung:
        return fail("hang: not exited 20 s after the burst")
    left = [p for p in sb.leftovers() if p.startswith("stress-ng")]
    if left:
        return fail(f"exit {r.rc}, stress-ng left running: {', '.join(left[:3])}")
    if r.rc not in allowed:
        return fail(f"{r.describe()} (want exit {' or '.join(map(str, sorted(allowed)))})")
    knob = sb.knob_value()
    if knob != STOCK:
        return fail(f"exit {r.rc} but the knob is {knob!r}, not the stock {STOCK}")
    note = f"; traceback logged: {r.last_line()}" if has_traceback(r.err) else ""
    return ok(f"exit {r.rc} in {r.seconds:.2f} s{note}")


def signal_cases(rng: random.Random, total: int) -> list[Case]:
    out = []
    moments = ["start-up", "start-up", "mid-trial", "mid-trial", "while stopping"]
    for _ in range(total):
        moment = rng.choice(moments)
        delay = rng.uniform(0.0, 1.5) if moment == "start-up" else rng.uniform(0.0, 0.9)
        burst = [
            (rng.choice(list(SIGS)), rng.choice([0.0, 0.001, 0.01, 0.05, 0.2]))
            for _ in range(rng.randint(1, 6))
        ]
        label = " ".join(f"{n}+{g * 1000:.0f}ms" for n, g in burst)
        name = f"{moment} +{delay:.2f} s: {label}"
        out.append(
            Case("signals", name, partial(check_signals, moment=moment, delay=delay, burst=burst), 90.0)
        )
    return out


# --- a fake stress-ng --------------------------------------------------------------------------------

_FAKE_HEAD = r"""#!/bin/sh
for a in "$@"; do
  if [ "$a" = "--version" ]; then
@VERSION@
  fi
done
yaml=/dev/null; t=1; prev=""; names="@NAMES@"
for a in "$@"; do
  case "$prev" in
    --yaml) yaml="$a" ;;
    --timeout) t="${a%s}" ;;
  esac
  [ "$a" = "--cyclic" ] && names="cyclic"
  prev="$a"
done
metrics() {
  { echo "---"; echo "system-info:"; echo "      stress-ng-version: 0.15.06"; echo "metrics:"
    for n in $names; do
      printf '    - stressor: %s\n      bogo-ops: %s\n' "$n" "$1"
      printf '      bogo-ops-per-second-usr-sys-time: %s\n      bogo-ops-per-second-real-time: %s\n' "$2" "$2"
      printf '      wall-clock-time: %s\n      user-time: 1.0\n      system-time: 0.0\n' "$3"
    done; } > "$yaml"
}
"""
_VERSION_OK = '    echo "stress-ng, version 0.15.06 (gcc 12.2.0, x86_64 Linux 6.1.0)"; exit 0'


def write_fake(
    sb: Sandbox, body: str, version: str = _VERSION_OK, names: str = "cpu matrix", blob: bytes | None = None
) -> None:
    """``<sandbox>/bin/stress-ng``: the fake, put first on the daemon's PATH."""
    bindir = sb.wd / "bin"
    bindir.mkdir(exist_ok=True)
    if blob is not None:
        (bindir / "blob").write_bytes(blob)
    script = _FAKE_HEAD.replace("@VERSION@", version).replace("@NAMES@", names) + body.replace(
        "@BLOB@", str(bindir / "blob")
    ).replace("@MARKER@", str(sb.marker))
    fake = bindir / "stress-ng"
    fake.write_text(script)
    fake.chmod(0o755)
    sb.path_prefix = bindir


def _bad_kpi(row: dict[str, Any]) -> str | None:
    for k, v in (row.get("kpis") or {}).items():
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            return f"{k}={v!r}"
    return None


def judge_trials(rows: list[dict[str, Any]], must_fail: bool) -> Verdict | None:
    for row in rows:
        if row.get("ok"):
            bad = _bad_kpi(row)
            if bad is not None:
                return fail(f"ok trial with KPI {bad} ({row.get('cand_id')}/{row.get('regime')})")
            if must_fail:
                return fail(f"ok trial from a broken stress-ng: {short(str(row.get('kpis')), 80)}")
        elif not str(row.get("failure") or "").strip():
            return fail(f"failed trial without a reason ({row.get('cand_id')}/{row.get('regime')})")
    return None


def check_fake(
    sb: Sandbox,
    body: str,
    must_fail: bool,
    version: str = _VERSION_OK,
    need: int = 3,
    blob: bytes | None = None,
) -> Verdict:
    sb.setup(workload="stressors", stressors=("cpu", "matrix"), probe=True, trials=1, min_trials=1)
    write_fake(sb, body, version, blob=blob)
    proc = sb.start_daemon()
    trials = sb.state / "logs" / "trials.jsonl"
    end = time.monotonic() + 30.0
    while time.monotonic() < end and proc.poll() is None and len(read_jsonl(trials)) < need:
        time.sleep(0.2)
    exited_alone = proc.poll() is not None
    r = sb.stop(proc, timeout=20.0)
    rows = read_jsonl(trials)
    if version != _VERSION_OK:
        return _judge_version(sb, r)
    if r.hung:
        return fail(f"hang: not exited 20 s after SIGTERM ({len(rows)} trials)")
    left = sb.leftovers()
    if left:
        return fail(f"fake's processes left behind: {', '.join(left[:3])}")
    if sb.marker.exists():
        return fail("the YAML parser ran a planted command (marker file created)")
    if exited_alone:
        return fail(f"daemon ended by itself after {len(rows)} trials: {r.describe()}")
    if r.rc != 0:
        return fail(f"SIGTERM: {r.describe()}")
    verdict = judge_trials(rows, must_fail)
    if verdict is not None:
        return verdict
    if not rows:
        log = log_summary(r.err)
        return fail("no trial recorded in 30 s (daemon alive)" + (f"; log: {log}" if log else ""))
    if sb.knob_value() != STOCK:
        return fail(f"knob left at {sb.knob_value()!r}")
    reasons = sorted({short(str(x.get("failure")), 50) for x in rows if not x.get("ok")})
    return ok(f"{len(rows)} trials, {sum(1 for x in rows if x.get('ok'))} ok; {'; '.join(reasons[:2])}")


def _judge_version(sb: Sandbox, r: Result) -> Verdict:
    if r.hung:
        return fail("broken --version: hang")
    lines = error_lines(r.err)
    if r.rc != 3 or has_traceback(r.err) or len(lines) != 1:
        return fail(f"broken --version: {len(lines)} error lines, {r.describe()}")
    if sb.leftovers():
        return fail(f"broken --version: left behind {sb.leftovers()[:3]}")
    return ok(f"exit 3: {short(lines[0], 80)}")


_SLEEP_EXIT0 = 'sleep "$t"; exit 0\n'
_VALUES = [
    "-5",
    "-1e308",
    "-0.5",
    ".nan",
    ".inf",
    "-.inf",
    "1e400",
    "null",
    "~",
    "",
    "0x1F",
    "1_000",
    "9" * 400,
    "1.7e308",
    "[1, 2]",
    "{a: 1}",
    "12abc",
]


def _garbage_blob(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.randrange(7)
    if kind == 0:
        n = rng.choice([16, 512, 65536])
        return f"{n} random bytes as YAML", bytes(rng.randrange(256) for _ in range(n))
    if kind == 1:
        return "unbalanced 'metrics: ['", b"---\nmetrics: [\n"
    if kind == 2:
        lines = ['a0: &a0 ["lol"]'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
        return "YAML alias bomb", ("\n".join(lines) + "\nmetrics: *a9\n").encode()
    if kind == 3:
        return "YAML nested 100000 deep", b"metrics: " + b"[" * 100000 + b"]" * 100000 + b"\n"
    if kind == 4:
        return "YAML python tag", b"metrics: !!python/object/apply:os.system ['touch @MARKER@']\n"
    if kind == 5:
        return "metrics a scalar", b"---\nmetrics: 5\n"
    return "metrics entries without numbers", b"---\nmetrics:\n    - stressor: cpu\n      bogo-ops: [[[\n"


def fake_specs(rng: random.Random, total: int) -> list[tuple[str, dict[str, Any]]]:
    specs: list[tuple[str, dict[str, Any]]] = [
        ("control: a sane fake", {"body": "metrics 100 100 1\n" + _SLEEP_EXIT0, "must_fail": False})
    ]
    for code in range(1, 8):
        specs.append(
            (f"exit {code}", {"body": f'echo "stress-ng: error: fake" >&2; exit {code}\n', "must_fail": True})
        )
    fixed = [
        ("hangs", "sleep 3600\n", True, 2),
        ("hangs, ignoring SIGTERM", "trap '' TERM INT HUP\nwhile :; do sleep 1; done\n", True, 2),
        (
            "daemonises a setsid child",
            "setsid sleep 300 </dev/null >/dev/null 2>&1 &\nmetrics 100 100 1\n" + _SLEEP_EXIT0,
            False,
            3,
        ),
        ("setsid child holding stdout", "setsid sleep 300 &\nmetrics 100 100 1\n" + _SLEEP_EXIT0, False, 2),
        (
            "setsid child ignoring SIGTERM",
            "setsid sh -c \"trap '' TERM; sleep 300\" </dev/null >/dev/null 2>&1 &\n"
            "metrics 100 100 1\n" + _SLEEP_EXIT0,
            False,
            3,
        ),
        ("exits 0 at once (short run)", "metrics 100 100 1\nexit 0\n", True, 3),
        ("kills itself with SIGKILL", "kill -KILL $$\n", True, 3),
        ("kills itself with SIGSEGV", "kill -SEGV $$\n", True, 3),
        (
            "30 MB on stdout",
            "head -c 30000000 /dev/zero | tr '\\0' x\nmetrics 100 100 1\n" + _SLEEP_EXIT0,
            False,
            3,
        ),
        ("metrics of another stressor", "names=nope\nmetrics 100 100 1\n" + _SLEEP_EXIT0, True, 3),
        ("exit 0 without YAML", _SLEEP_EXIT0, True, 3),
    ]
    for name, body, must_fail, need in fixed:
        specs.append((name, {"body": body, "must_fail": must_fail, "need": need}))
    specs.append(
        (
            "--version prints garbage",
            {"body": _SLEEP_EXIT0, "must_fail": True, "version": "    echo hello; exit 0"},
        )
    )
    specs.append(("--version exits 1", {"body": _SLEEP_EXIT0, "must_fail": True, "version": "    exit 1"}))
    rest: list[tuple[str, dict[str, Any]]] = []
    while len(specs) + len(rest) < max(total, 3 * len(specs)):
        rest.append(_random_spec(rng))
    if total <= len(specs):
        return [specs[0], *rng.sample(specs[1:] + rest, max(0, total - 1))]
    return specs + rest[: total - len(specs)]


_ODD_BUT_VALID = {"1.7e308", "1_000"}  # finite, non-negative numbers Python reads: an ok trial is fine


def _random_spec(rng: random.Random) -> tuple[str, dict[str, Any]]:
    if rng.random() < 0.55:
        b, rate, wall = (
            rng.choice(_VALUES),
            rng.choice([*_VALUES, "100"]),
            rng.choice(["1", "-1", ".nan", "1"]),
        )
        must_fail = not (b in _ODD_BUT_VALID and rate in {"100", "1_000"} and wall == "1")
        body = f"metrics '{b}' '{rate}' '{wall}'\n" + _SLEEP_EXIT0
        return f"bogo-ops {b[:12]} rate {rate[:12]} wall {wall}", {"body": body, "must_fail": must_fail}
    if rng.random() < 0.6:
        name, blob = _garbage_blob(rng)
        body = 'cat "@BLOB@" > "$yaml"\n' + _SLEEP_EXIT0
        return f"garbage YAML: {name}", {"body": body, "must_fail": True, "blob": blob}
    code = rng.randint(1, 7)
    body = f'metrics 100 100 1\nsleep "$t"\nexit {code}\n'
    return f"exit {code} after writing valid metrics", {"body": body, "must_fail": True}


def _with_marker(sb: Sandbox, blob: bytes | None) -> bytes | None:
    return None if blob is None else blob.replace(b"@MARKER@", str(sb.marker).encode())


def _check_fake_case(sb: Sandbox, spec: dict[str, Any]) -> Verdict:
    kw = dict(spec)
    blob = kw.pop("blob", None)
    if blob is not None:
        kw["blob"] = _with_marker(sb, blob)
    return check_fake(sb, **kw)


def stressng_cases(rng: random.Random, total: int) -> list[Case]:
    return [
        Case("stressng", name, partial(_check_fake_case, spec=spec), 120.0)
        for name, spec in fake_specs(rng, total)
    ]
