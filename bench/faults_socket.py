"""Fault class ``socket``: hostile clients of the status socket.

Each case starts a daemon (a generic domain whose workload is a tiny command, so its first
tournament takes a fraction of a second and it then rests), waits for a status answer, lets the
hostile client(s) loose, then asks for status on a fresh connection.

Survived: that status query is answered ``ok`` within its bound (10 s; 45 s after a thousand idle
connections, whose slots free up only at the daemon's idle timeout), the daemon is still alive, and
a SIGTERM afterwards ends it with exit 0 and nothing left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial

from faults_lib import Case, Sandbox, Verdict, fail, has_traceback, ok, read_answer

CLS = "socket"
IDLE_BOUND_S = 45.0  # the daemon frees the slots of idle clients after its idle timeout (30 s)
Attack = Callable[[Sandbox], str]  # does its thing; returns a note for the report


def connect(sb: Sandbox, timeout: float = 2.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(os.fspath(sb.sock))
    except OSError:
        s.close()
        raise
    return s


@contextlib.contextmanager
def held(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def status_within(sb: Sandbox, bound: float) -> float | None:
    """Seconds until a fresh connection gets an ok status, or None after ``bound``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound and not sb.overdue:
        if sb.status(timeout=min(5.0, max(0.5, bound - (time.monotonic() - t0)))) is not None:
            return time.monotonic() - t0
        time.sleep(0.2)
    return None


def check_socket(sb: Sandbox, attack: Attack, bound: float, during: bool) -> Verdict:
    """Run ``attack``; the status check happens inside it when ``during`` (it then returns 'ok' text)."""
    sb.setup()
    proc = sb.start_daemon()
    if sb.wait_status(proc, lambda s: True, 20.0) is None:
        r = sb.stop(proc)
        return fail(f"daemon never answered before the attack ({r.describe()})")
    try:
        note = attack(sb)
    except Exception as e:  # the attack's own socket errors are the daemon's answers, not ours
        note = f"client error {type(e).__name__}"
    waited = 0.0
    if not during:
        got = status_within(sb, bound)
        if got is None:
            alive = proc.poll() is None
            r = sb.stop(proc)
            return fail(
                f"no status within {bound:.0f} s after the attack ({note}); "
                f"{'alive' if alive else f'daemon died, {r.describe()}'}"
            )
        waited = got
    elif note.startswith("FAIL"):
        sb.stop(proc)
        return fail(note[5:])
    if proc.poll() is not None:
        r = sb.finish(proc, 1.0)
        return fail(f"daemon ended after the attack: {r.describe()}")
    r = sb.stop(proc)
    if r.rc != 0:
        return fail(f"SIGTERM after the attack: {r.describe()}")
    if has_traceback(r.err):
        note += f"; traceback logged: {r.last_line()}"
    left = sb.leftovers()
    if left:
        return fail(f"processes left behind: {', '.join(left[:3])}")
    return ok(f"{note}; status after {waited:.2f} s" if not during else note)


# --- attacks -----------------------------------------------------------------------------------------


def idle(n: int, partial_line: bool) -> Attack:
    def attack(sb: Sandbox) -> str:
        socks: list[socket.socket] = []
        failed = 0
        with held(socks):
            for _ in range(n):
                try:
                    s = connect(sb, 1.0)
                except OSError:
                    failed += 1
                    continue
                socks.append(s)
                if partial_line:
                    with contextlib.suppress(OSError):
                        s.send(b'{"cmd": "sta')
            t = status_within(sb, IDLE_BOUND_S)
        if t is None:
            n_idle = len(socks)
            return (
                f"FAIL no status in {IDLE_BOUND_S:.0f} s beside {n_idle} idle connections ({failed} refused)"
            )
        return f"{len(socks)} held, {failed} connects failed; status after {t:.2f} s while held"

    return attack


def one_line(line: bytes, then_status: bool = True) -> Attack:
    """Send ``line`` (its newline included), read the answer, then ask for status on the same connection."""

    def attack(sb: Sandbox) -> str:
        with connect(sb, 10.0) as s:
            try:
                s.sendall(line)
                first = read_answer(s)
            except (OSError, ValueError) as e:
                return f"connection ended ({type(e).__name__})"
            if not then_status:
                return f"answered ok={first.get('ok')}"
            try:
                s.sendall(b'{"cmd": "status"}\n')
                second = read_answer(s)
            except (OSError, ValueError):
                return f"answered ok={first.get('ok')}, then closed"
            return f"answered ok={first.get('ok')}, same connection then ok={second.get('ok')}"

    return attack


def garbage(seed: float, k: int) -> Attack:
    def attack(sb: Sandbox) -> str:
        rng = random.Random(seed)
        answered = closed = 0
        s = connect(sb, 5.0)
        try:
            for _ in range(k):
                try:
                    s.sendall(_garbage_line(rng))
                    read_answer(s)
                    answered += 1
                except (OSError, ValueError):
                    closed += 1
                    s.close()
                    s = connect(sb, 5.0)
        finally:
            s.close()
        return f"{k} garbage lines: {answered} answered, {closed} ended the connection"

    return attack


def _garbage_line(rng: random.Random) -> bytes:
    kind = rng.randrange(9)
    if kind == 0:
        return (
            bytes(rng.choice([b for b in range(256) if b != 10]) for _ in range(rng.randint(1, 2000))) + b"\n"
        )
    if kind == 1:
        return json.dumps(rng.choice([1, "s", None, [], 1e308, True, [{"cmd": "status"}]])).encode() + b"\n"
    if kind == 2:
        return (
            json.dumps(
                {"cmd": rng.choice([5, None, [], {}, "", "x" * 5000, "shutdown", "../status"])}
            ).encode()
            + b"\n"
        )
    if kind == 3:
        return b'{"cmd": "status", "x": ' + b"1" * rng.randint(1, 5000) + b"}\n"
    if kind == 4:
        return b'{"cmd": "status\x00"}\n'
    if kind == 5:
        return b'{"cmd": "\xff\xfe"}\n'
    if kind == 6:
        return b'{"cmd": "status", "n": 1e999999}\n'
    if kind == 7:
        return b'{"cmd": "status", "s": "\\ud800"}\n'
    return b"\r\n" if rng.random() < 0.5 else b'{"cmd": "status"' + b" " * rng.randint(0, 60000) + b"}\n"


def half_lines(k: int) -> Attack:
    def attack(sb: Sandbox) -> str:
        socks: list[socket.socket] = []
        with held(socks):
            for i in range(k):
                with contextlib.suppress(OSError):
                    s = connect(sb, 1.0)
                    socks.append(s)
                    s.send(b'{"cmd": "status"'[: 1 + i % 15])
            t = status_within(sb, 10.0)
        return (
            f"FAIL no status within 10 s beside {k} half lines"
            if t is None
            else f"{k} half lines; status {t:.2f} s"
        )

    return attack


def slow(interval: float, payload: bytes) -> Attack:
    """A client trickling ``payload`` one byte per ``interval`` s; a fresh status meanwhile within 5 s."""

    def attack(sb: Sandbox) -> str:
        stop = threading.Event()
        s = connect(sb, 5.0)

        def trickle() -> None:
            with contextlib.suppress(OSError):
                for b in payload:
                    if stop.wait(interval):
                        return
                    s.send(bytes([b]))

        th = threading.Thread(target=trickle, daemon=True)
        th.start()
        try:
            time.sleep(min(1.0, interval * len(payload) / 2))
            t = status_within(sb, 5.0)
        finally:
            stop.set()
            th.join(5)
            s.close()
        return (
            "FAIL no status within 5 s beside a slow client"
            if t is None
            else f"slow client; status {t:.2f} s"
        )

    return attack


def non_reader(n: int) -> Attack:
    """Many requests on one connection that is never read; a fresh status meanwhile within 10 s."""

    def attack(sb: Sandbox) -> str:
        s = connect(sb, 10.0)
        sent = 0
        try:
            with contextlib.suppress(OSError):
                for _ in range(n // 100):
                    s.sendall(b'{"cmd": "status"}\n' * 100)
                    sent += 100
            t = status_within(sb, 10.0)
        finally:
            s.close()
        return (
            f"FAIL no status within 10 s beside a client that never reads ({sent} sent)"
            if t is None
            else (f"{sent} unread requests; status {t:.2f} s")
        )

    return attack


def storm(n: int) -> Attack:
    def attack(sb: Sandbox) -> str:
        failed = 0
        for _ in range(n):
            try:
                connect(sb, 1.0).close()
            except OSError:
                failed += 1
        return f"{n} connect/close ({failed} failed)"

    return attack


# --- the class ---------------------------------------------------------------------------------------


def cases(rng: random.Random, total: int) -> list[Case]:
    specs: list[tuple[str, Attack, float, bool]] = [
        ("1100 idle connections", idle(1100, False), IDLE_BOUND_S, True),
        ("1100 connections holding half a line", idle(1100, True), IDLE_BOUND_S, True),
        ("60000-deep JSON line", one_line(b"[" * 60000 + b"]" * 60000 + b"\n"), 10.0, False),
        (
            "20000-deep JSON line (under the line cap)",
            one_line(b"[" * 20000 + b"]" * 20000 + b"\n"),
            10.0,
            False,
        ),
        (
            "30000-deep object in cmd",
            one_line(b'{"cmd": ' + b'{"a":' * 10000 + b"1" + b"}" * 10001 + b"\n"),
            10.0,
            False,
        ),
        ("10 MB line", one_line(b"x" * (10 << 20) + b"\n"), 10.0, False),
        ("NUL bytes line", one_line(b"\x00" * 1000 + b"\n"), 10.0, False),
    ]
    n_more = max(0, total - len(specs))
    for i in range(n_more):
        kind = i % 5
        if kind == 0:
            k = rng.randint(5, 60)
            specs.append((f"{k} random garbage lines", garbage(rng.random(), k), 10.0, False))
        elif kind == 1:
            depth = rng.choice([33, 100, 1000, 5000, 31000, 60000, 200000])
            specs.append(
                (f"{depth}-deep JSON line", one_line(b"[" * depth + b"]" * depth + b"\n"), 10.0, False)
            )
        elif kind == 2:
            k = rng.choice([1, 10, 50, 127, 200])
            specs.append((f"{k} half lines then silence", half_lines(k), 10.0, True))
        elif kind == 3:
            iv = rng.choice([0.05, 0.2, 0.5])
            specs.append((f"slow client, a byte per {iv} s", slow(iv, b'{"cmd": "status"}\n'), 5.0, True))
        else:
            if rng.random() < 0.5:
                n = rng.choice([2000, 20000, 100000])
                specs.append((f"{n} requests never read", non_reader(n), 10.0, True))
            else:
                n = rng.choice([500, 2000, 5000])
                specs.append((f"{n} connect/close storm", storm(n), 10.0, False))
    if len(specs) > total:
        keep = 2 if total >= 12 else 1  # the idle-connection cases take over 30 s each
        specs = specs[:keep] + rng.sample(specs[2:], total - keep)
    return [
        Case(CLS, name, partial(check_socket, attack=a, bound=b, during=d), 150.0) for name, a, b, d in specs
    ]
