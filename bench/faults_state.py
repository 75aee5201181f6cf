"""Fault class ``state``: hostile files under ``state_dir`` before a start.

Every case starts from a real state directory (made once per campaign by the product itself: one
daemon, one D-REAM generation, one PHASE window, its collapse), copies it into its sandbox, plants
one fault, then starts the daemon twice on the same directory: ``run --once`` (for PHASE results:
the daemon, until its first tournament is done, then SIGTERM — ``--once`` never reads them), then
``run --once`` again.

Survived: each start exits 0 with the knob back at its stock value, or exits 2 with exactly one
line for the operator and no traceback; no hang; no marker file of a planted restore command; no
file outside the state directory changed; nothing left running; and a second start does not fail
the way the first did (no crash loop) unless the refusal is a security one that needs the operator.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from faults_lib import (
    STOCK,
    Case,
    Result,
    Sandbox,
    Verdict,
    error_lines,
    fail,
    has_traceback,
    ok,
    read_jsonl,
    short,
    tree_changes,
    tree_snapshot,
)
from faults_state_plants import (
    NODES,
    SHAPES,
    Plant,
    attack_plants,
    content_plants,
    entry,
    in_state,
    journal_file,
    knob_path,
    load_doc,
    mutation_plants,
    pack_file,
    perm_plants,
    put_node,
    results_file,
    shape_plant,
)

CLS = "state"
START_TIMEOUT_S = 15.0

# --- the template state directory ---------------------------------------------------------------------

_lock = threading.Lock()
_template: dict[str, Any] = {}


def template() -> Path:
    """A real state directory (built once, by the product); raises RuntimeError when it cannot be."""
    with _lock:
        if "error" in _template:
            raise RuntimeError(_template["error"])
        if "path" not in _template:
            try:
                _template["sb"], _template["path"] = _build_template()
            except RuntimeError as e:
                _template["error"] = str(e)
                raise
        return Path(_template["path"])


def _build_template() -> tuple[Sandbox, Path]:
    sb = Sandbox.create()
    sb.setup(window="now+2")
    proc = sb.start_daemon()
    events = sb.state / "logs" / "events.jsonl"
    end = time.monotonic() + 60
    names: list[str] = []
    while time.monotonic() < end and proc.poll() is None:
        names = [str(e.get("event")) for e in read_jsonl(events)]
        if "results_collapsed" in names and names[names.index("results_collapsed") :].count("pacing"):
            break
        time.sleep(0.2)
    r = sb.stop(proc)
    if r.rc != 0 or "results_collapsed" not in names:
        sb.cleanup()
        raise RuntimeError(f"template state: daemon {r.describe()}, events {names[-6:]}")
    return sb, sb.state


def cleanup_template() -> None:
    with _lock:
        sb = _template.pop("sb", None)
        if sb is not None:
            sb.cleanup()


def fresh(sb: Sandbox) -> None:
    """The sandbox with a copy of the template state directory."""
    sb.setup()
    shutil.copytree(template(), sb.state, symlinks=True)
    (sb.state / "lock").unlink(missing_ok=True)


# Per target: where the file is, what the harness does first so that the daemon reads it, and how
# it is started ("once", or "daemon" for the PHASE results that only a daemon collapses).
def _prep_pack(sb: Sandbox) -> None:
    (sb.state / "state.json").unlink(missing_ok=True)  # packs are read only without a saved state


def _prep_results(sb: Sandbox) -> None:
    st = load_doc(sb.state / "state.json")
    if isinstance(st, dict):
        st["last_collapsed"] = None  # collapse again from disk
        (sb.state / "state.json").write_text(json.dumps(st))


TARGETS: dict[str, tuple[Callable[[Sandbox], Path], Callable[[Sandbox], None] | None, str]] = {
    "state.json": (lambda sb: sb.state / "state.json", None, "once"),
    "candidate pack": (pack_file, _prep_pack, "once"),
    "phase results": (results_file, _prep_results, "daemon"),
    "baselines.json": (lambda sb: sb.state / "artifacts" / "baselines.json", None, "once"),
    "journal entry": (lambda sb: journal_file(sb, knob_path(sb)), None, "once"),
}


# --- starting and judging ----------------------------------------------------------------------------


def start_daemon_until_tournament(sb: Sandbox) -> Result:
    t0 = time.monotonic()
    proc = sb.start_daemon()
    st = sb.wait_status(proc, lambda s: (s.get("counters") or {}).get("tournaments", 0) >= 1, START_TIMEOUT_S)
    if st is None and proc.poll() is None:
        r = sb.stop(proc, timeout=10.0)
        if r.rc is not None:
            r.rc = -1000  # alive, but never answered a status query showing a finished tournament
        return r
    return sb.stop(proc, timeout=15.0) if proc.poll() is None else sb.finish(proc, 1.0, t0)


def judge(sb: Sandbox, r: Result, outside: dict[str, tuple[Any, ...]], which: str) -> Verdict:
    if r.hung:
        return fail(f"{which}: {r.describe()}")
    if r.rc == -1000:
        return fail(
            f"{which}: daemon alive but no status with a finished tournament in {START_TIMEOUT_S:.0f} s"
        )
    if sb.marker.exists():
        return fail(f"{which}: planted restore command ran (marker file created)")
    changed = tree_changes(outside, tree_snapshot(sb.outside))
    if changed:
        return fail(f"{which}: file outside state_dir changed: outside/{changed[0]}")
    left = sb.leftovers()
    if left:
        return fail(f"{which}: processes left behind: {', '.join(left[:3])}")
    if r.rc == 2:
        lines = error_lines(r.err)
        if has_traceback(r.err) or len(lines) != 1:
            return fail(f"{which}: exit 2 with {len(lines)} error lines: {r.last_line()}")
    elif r.rc != 0:
        return fail(f"{which}: {r.describe()}")
    knob = sb.knob_value()
    if knob != STOCK:
        return fail(f"{which}: exit {r.rc} but the knob is {short(repr(knob), 40)}, not the stock {STOCK}")
    return ok()


def check_state(
    sb: Sandbox, plant: Plant, prep: Callable[[Sandbox], None] | None, mode: str, refusal_ok: bool
) -> Verdict:
    try:
        fresh(sb)
    except RuntimeError as e:
        return fail(short(str(e)))
    if prep is not None:
        prep(sb)
    outside = tree_snapshot(sb.outside)
    plant(sb)
    r1 = start_daemon_until_tournament(sb) if mode == "daemon" else sb.run_once(START_TIMEOUT_S)
    v = judge(sb, r1, outside, "first start")
    if not v.survived:
        return v
    r2 = sb.run_once(START_TIMEOUT_S)
    v = judge(sb, r2, outside, "second start")
    if not v.survived:
        return v
    if r1.rc == 2 and r2.rc == 2 and not refusal_ok:
        return fail(f"crash loop: the second start is refused the same way: {short(error_lines(r2.err)[0])}")
    if r1.rc == 2:
        return ok(
            f"refused: {short(error_lines(r1.err)[0], 90)}" + ("" if r2.rc == 2 else "; second start ok")
        )
    return ok(f"ran (exit 0), second start exit {r2.rc}")


# --- the class ---------------------------------------------------------------------------------------


Item = tuple[str, Plant, Callable[[Sandbox], None] | None, str, bool]  # name, plant, prep, mode, refusal ok


def fixed_items() -> list[Item]:
    """Every hand-written input: wrong shapes, journal attacks, wrong node types, permissions."""
    items: list[Item] = []
    for target, (path_of, prep, mode) in TARGETS.items():
        for name, spec in SHAPES[target]:
            items.append((f"{target}: {name}", shape_plant(path_of, target, spec), prep, mode, False))
    for name, plant, _control in attack_plants():
        items.append((f"journal attack: {name}", plant, None, "once", False))
    for rel, kind, to in NODES:
        what = f"symlink to {to.replace('@OUT', 'outside')}" if kind == "symlink" else f"a {kind}"
        phase = rel.startswith("phase")  # only a daemon (not --once) reads PHASE results
        prep, mode = (_prep_results, "daemon") if phase else (None, "once")
        items.append((f"{rel} is {what}", put_node(in_state(rel), kind, to), prep, mode, False))
    for name, plant in perm_plants():
        items.append((name, plant, None, "once", True))
    return items


def generated_items(rng: random.Random, per: int) -> list[Item]:
    """Per target: ``per`` content faults (plus a truncation) and ``per`` mutations of the real file."""
    try:
        docs = {t: load_doc(path_of(_template_view())) for t, (path_of, _, _) in TARGETS.items()}
    except RuntimeError:
        docs = {t: {} for t in TARGETS}
    docs["journal entry"] = entry(Sandbox(Path("/sandbox")))  # the template's journal is empty
    bases = {"journal entry": entry}
    items: list[Item] = []
    for target, (path_of, prep, mode) in TARGETS.items():
        base = bases.get(target)
        plants = content_plants(rng, path_of, per, base) + mutation_plants(
            rng, path_of, docs[target], per, base
        )
        items += [(f"{target}: {name}", plant, prep, mode, False) for name, plant in plants]
    return items


def cases(rng: random.Random, total: int) -> list[Case]:
    """About ``total`` inputs: every fixed one and generated ones when ``total`` allows, else a sample."""
    fixed = fixed_items()
    per = max(1, ((total - len(fixed)) // len(TARGETS) - 1) // 2)
    generated = generated_items(rng, per)
    if total >= len(fixed) + len(TARGETS):
        items = fixed + generated[: total - len(fixed)]
    else:
        items = rng.sample(fixed + generated, total)
    return [
        Case(CLS, name, partial(check_state, plant=plant, prep=prep, mode=mode, refusal_ok=refusal_ok), 120.0)
        for name, plant, prep, mode, refusal_ok in items
    ]


def _template_view() -> Sandbox:
    """A sandbox-shaped view of the template (its target paths resolve inside the template)."""
    return Sandbox(template().parent)
