"""``report``: a self-contained HTML page about a state_dir, checked in a real browser.

The state directory is made by the product itself: the in-process daemon of the runtime tests
(fake trial runner, real D-REAM, racing, packs, fitness history, events, a real PHASE window over
the socket with its analysis, collapse and ``promotion: auto``). A few of its trials fail the way
the evaluator reports failures (``<reason>: <message>``), so the failure figure has bars.

Chromium (the Debian package; ``make test`` installs it) renders the page headless to a PNG: no
console message at all (the page's Content-Security-Policy turns any request into one), every
figure in the DOM as an inline PNG, and a screenshot that is not blank.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path

import anyio
import msgspec
import pytest
import yaml
from PIL import Image
from test_runtime_driver import DOMAIN, FakeRunner, Rig, ask, new_rig, running

from kloros_orchestrator import cli_report
from kloros_orchestrator.config import load_config
from kloros_orchestrator.core.coordinator import State
from kloros_orchestrator.model import STOCK_ARM, Genome, TrialResult
from kloros_orchestrator.phase.results import load_results
from kloros_orchestrator.report import INDEX, build_report, figures, gather
from kloros_orchestrator.report.records import (
    Candidate,
    FailureGroup,
    FameEntry,
    GenerationBest,
    KpiDelta,
    PacingPoint,
)
from kloros_orchestrator.runtime.ports import EventLog
from kloros_orchestrator.spica.base import SpicaDomain
from kloros_orchestrator.store import append_jsonl, read_jsonl

FIGURES = ("fig-scores-0", "fig-forest", "fig-phase", "fig-pacing", "fig-failures")
SECTIONS = ("sec-scores", "sec-fame", "sec-phase", "sec-racing", "sec-pacing", "sec-failures", "sec-host",
            "sec-machine")  # fmt: skip
BROWSER_TIMEOUT_S = 120
BROWSER_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr", "--v=0",
)  # fmt: skip
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAILURES = (
    "timeout: stress-ng still running 3.0 s after its deadline; process group killed",
    "short_run: ran 0.41 s of the 1 s asked for (signalled?)",
)


class FlakyRunner(FakeRunner):
    """The runtime tests' fake runner, handing every trial to ``on_trial`` as the real evaluator
    does (the daemon's ``logs/trials.jsonl`` writer); while ``failing()``, every 5th candidate trial
    fails as the evaluator reports a failure (no KPIs, ``failure`` = ``<reason>: <message>``)."""

    def __init__(self, knob_file: Path) -> None:
        super().__init__(knob_file)
        self.calls = 0
        self.on_trial: Callable[[TrialResult], None] = lambda _: None
        self.failing: Callable[[], bool] = lambda: False

    async def run_trial(
        self,
        domain: SpicaDomain,
        genome: Genome,
        regime: str,
        *,
        cand_id: str,
        duration_s: float | None = None,
        cpus: tuple[int, ...] | None = None,
    ) -> TrialResult:
        result = await super().run_trial(
            domain, genome, regime, cand_id=cand_id, duration_s=duration_s, cpus=cpus
        )
        if cand_id != STOCK_ARM and self.failing():
            self.calls += 1
            if self.calls % 5 == 0:
                self.counters.failed_trials += 1
                failure = FAILURES[(self.calls // 5) % len(FAILURES)]
                result = msgspec.structs.replace(result, ok=False, kpis={}, failure=failure)
        self.on_trial(result)
        return result


def _configure(rig: Rig) -> FlakyRunner:
    """Three candidates raced over three rounds, two PHASE epochs."""
    path = rig.root / "dream.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["dream"].update(population=3, trials=3, min_trials=2)
    cfg["phase"]["qtime"] = {"epochs": 2, "slices": 4, "replicas": 2}
    path.write_text(yaml.safe_dump(cfg))
    rig.loaded = load_config(path)
    rig.runner = runner = FlakyRunner(rig.knob_file)
    return runner


async def _dream_adopt_phase_dream(rig: Rig, runner: FlakyRunner) -> None:
    """A tournament, a PHASE window (whose candidate trials sometimes fail), a tournament; the
    operator adopts PHASE's best (forced: not promoted); a second window and a third tournament,
    whose stock arm is the adopted configuration."""
    d = rig.daemon()
    runner.on_trial = d._log_trial  # what Evaluator(on_trial=...) gets in production
    runner.failing = lambda: d.coord.state is State.PHASE
    async with running(d) as log:
        for window in (1, 2):
            await log.wait_for("pacing", window)  # a tournament is done, D-REAM rests
            if window == 2:
                best = load_results(d.paths.phase / "latest", move_aside=False).metrics[DOMAIN].best_cand_id
                apply = {"cmd": "apply", "domain": DOMAIN, "variant": best, "force": True}
                reply = await d.handle_request(apply)
                assert reply["ok"] is True, reply
            reply = await ask(d, "phase-now")
            assert reply["ok"] is True, reply
            await log.wait_for("results_collapsed", window)
        await log.wait_for("pacing", 3)  # D-REAM resumed: a third tournament, a third rest


@pytest.fixture(scope="module")
def state() -> Iterator[Path]:
    """A state_dir from one D-REAM tournament, one PHASE window, and one more tournament."""
    rigs = new_rig()
    rig = next(rigs)
    try:
        anyio.run(_dream_adopt_phase_dream, rig, _configure(rig))
        yield rig.state_dir
    finally:
        next(rigs, None)


@pytest.fixture(scope="module")
def report(state: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_report(state, tmp_path_factory.mktemp("report"))


class Page(HTMLParser):
    """What a test needs of the page: ids, the images of each figure, every URL, scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.figure_images: dict[str, list[str]] = {}
        self.urls: list[str] = []
        self.tags: list[str] = []
        self._figure: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "figure":
            self._figure = a.get("id", "")
            self.figure_images[self._figure] = []
        for key in ("src", "href", "action", "srcset", "poster"):
            if key in a:
                self.urls.append(a[key])
        if tag == "img" and self._figure is not None:
            self.figure_images[self._figure].append(a.get("src", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None


def parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    p.close()
    return p


def png_of(uri: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:60]
    png = base64.b64decode(uri[len(prefix) :], validate=True)
    assert png[:8] == PNG_MAGIC
    return png


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG_MAGIC and png[12:16] == b"IHDR"
    w, h = struct.unpack(">II", png[16:24])
    return int(w), int(h)


def assert_self_contained(page: Page, text: str) -> None:
    """Nothing the browser could fetch: no script, no stylesheet link, no URL but data: and #anchors."""
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    for url in page.urls:
        assert url.startswith(("data:image/png;base64,", "#")), url[:80]
    assert "url(" not in text and "@import" not in text
    assert "Content-Security-Policy" in text


# --- the page -----------------------------------------------------------------------------------------


def test_the_page_has_every_section_and_figure_inline_and_fetches_nothing(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    page = parse(text)
    assert set(SECTIONS) <= page.ids
    for fig in FIGURES:
        assert fig in page.figure_images, f"{fig} missing"
        (uri,) = page.figure_images[fig]
        w, h = png_size(png_of(uri))
        assert w > 300 and h > 100, (fig, w, h)
    assert_self_contained(page, text)
    assert "No data yet" not in text  # every section had something to show
    assert "sec-problems" not in page.ids  # and every file read back


def test_the_page_says_what_the_files_say(state: Path, report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    esc = html.escape
    results = load_results(state / "phase" / "latest", move_aside=False)
    assert esc(results.run_id) in text
    for m in results.metrics.values():
        for insight in m.insights:
            assert esc(insight[:200]) in text
    for p in results.promoted_variants:
        assert esc(p.reason[:200]) in text
    for f in results.flagged_variants:
        assert esc(f.reasons[0][:200]) in text
    history = read_jsonl(state / "logs" / "fitness_history.jsonl")
    eliminated = [r for r in history if r.get("eliminated")]
    assert eliminated, "the fixture's racing eliminated nobody: the racing table is untested"
    for r in eliminated:
        assert esc(r["elimination"][:200]) in text
    trials = read_jsonl(state / "logs" / "trials.jsonl")
    failed = [t for t in trials if not t["ok"]]
    assert failed and f"{len(failed)} of {len(trials)} trials failed" in text
    for kind in {t["failure"].split(":")[0] for t in failed}:
        assert f"<td>{kind}</td>" in text
    pacing = [e for e in read_jsonl(state / "logs" / "events.jsonl") if e["event"] == "pacing"]
    assert f"of {len(pacing)} decisions" in text
    (manifest,) = [json.loads(p.read_text()) for p in (state / "artifacts" / "manifests").glob("*.json")]
    assert esc(manifest["kernel"]) in text and manifest["code_hash"] in text
    assert str(state) not in text  # no path of the machine that made it


def test_hall_of_fame_deltas_are_the_packs_numbers(state: Path) -> None:
    data = gather(state)
    assert data.fame and all(f.deltas for f in data.fame)
    entry = data.fame[0]
    packs = state / "artifacts" / "candidates" / entry.domain
    pack = json.loads((packs / f"gen{entry.generation}_best.json").read_text())
    reg = next(r for r in pack["regimes"] if r["regime"] == "stress")
    base = reg["baseline"]["throughput_ops"]
    mean = sum(reg["kpis"]["throughput_ops"]) / len(reg["kpis"]["throughput_ops"])
    d = next(d for d in entry.deltas if d.regime == "stress" and d.kpi == "throughput_ops")
    assert d.pct == pytest.approx((mean / base - 1) * 100)
    lo, hi = reg["ci95"]["throughput_ops"]
    assert d.ci_pct == pytest.approx(((lo / base - 1) * 100, (hi / base - 1) * 100))


# --- in a browser -------------------------------------------------------------------------------------


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (Debian package `chromium`; `make test` installs it)")
    return exe


def _browse(exe: str, page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [exe, *BROWSER_FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()]
    return subprocess.run(argv, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=False)


CONSOLE = re.compile(r"CONSOLE[(:]")  # "INFO:CONSOLE:1] ..." (recent) or "CONSOLE(1)" (older Chromium)


def test_chromium_renders_the_report_without_console_messages_and_with_every_figure(
    report: Path, tmp_path: Path
) -> None:
    exe = _chromium()
    shot = tmp_path / "report.png"
    run = _browse(exe, report, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,4000")
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if CONSOLE.search(line)]
    assert console == [], console
    png = shot.read_bytes()
    assert png_size(png) == (1280, 4000)
    assert len(png) > 100_000, f"a {len(png)}-byte screenshot is a blank page"
    with Image.open(shot) as im:  # Pillow: a matplotlib dependency
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 500, "the screenshot has the few colours of text alone: no figure was drawn"
    dom = _browse(exe, report, tmp_path / "profile2", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert [line for line in dom.stderr.splitlines() if CONSOLE.search(line)] == []
    page = parse(dom.stdout)  # the DOM as the browser built it, not the file
    assert set(SECTIONS) <= page.ids
    for fig in FIGURES:
        (uri,) = page.figure_images[fig]
        png_of(uri)
    assert_self_contained(page, dom.stdout)


# --- nothing yet, bad files, hostile text -------------------------------------------------------------


def test_an_empty_state_dir_gives_a_page_of_no_data_yet(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    text = build_report(state, tmp_path / "out").read_text()
    page = parse(text)
    assert set(SECTIONS) <= page.ids
    assert not page.figure_images and "img" not in page.tags
    for what in ("no tournament has finished", "no hall of fame", "no PHASE window has completed",
                 "no candidate in the fitness history", "no pacing decision", "no trial in trials.jsonl",
                 "no run manifest"):  # fmt: skip
        assert f"No data yet: {what}" in text
    assert_self_contained(page, text)
    assert sorted(p.name for p in state.iterdir()) == []  # read, never written


def test_untrusted_text_is_escaped_and_bad_files_are_listed_not_moved(tmp_path: Path) -> None:
    state = tmp_path / "state"
    hostile = '<script>alert(1)</script> $\\frac{1}{0}$ "quoted" & <img src=http://x>'
    append_jsonl(state / "logs" / "trials.jsonl", {"ts": 1.0, "domain": "cpu", "cand_id": "g0c0",
                 "regime": "idle", "ok": False, "failure": f"{hostile}: boom"})  # fmt: skip
    append_jsonl(state / "logs" / "trials.jsonl", {"ts": 2.0, "domain": "cpu", "cand_id": "g0c1",
                 "regime": "idle", "ok": True, "kpis": {"throughput_ops": 1.0}})  # fmt: skip
    events = EventLog(state / "logs" / "events.jsonl", lambda: 1_800_000_000.0)
    events.record("pacing", sleep_s=30.0, reason=hostile, inputs={}, defer_to_window=False)
    events.record("pacing", sleep_s=float("nan"), reason="not a number: skipped")  # written as null
    events.record("domain_backoff", domain=hostile, seconds=600, reason=hostile, drift=[])
    events.record("race_eliminated", domain="cpu", generation=3, cand_id="g3c1", reason="behind g3c0 <t=9>")
    (state / "logs" / "fitness_history.jsonl").write_text('{"kind": "candidate", "domain": 5}\n{torn')
    packs = state / "artifacts" / "candidates" / "cpu"
    packs.mkdir(parents=True)
    (packs / "gen0_best.json").write_text("{not json")
    (tmp_path / "elsewhere.json").write_text("{}")
    (state / "state.json").symlink_to(tmp_path / "elsewhere.json")
    (state / "phase").mkdir()
    (state / "phase" / "latest").symlink_to("../../elsewhere")

    text = build_report(state, tmp_path / "out").read_text()
    page = parse(text)
    assert_self_contained(page, text)
    assert "<script>" not in text and "http://x" not in [*page.urls]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert '<td>g3c1</td><td class="num">–</td><td>behind g3c0 &lt;t=9&gt;</td>' in text  # the event alone
    assert "fig-failures" in page.figure_images and "fig-pacing" in page.figure_images  # "$" drawn as text
    problems = text[text.index('id="sec-problems"') :]
    assert "state_dir/artifacts/candidates/cpu/gen0_best.json" in problems
    assert "state_dir/state.json" in problems and "symbolic link" in problems
    assert "state_dir/phase/latest" in problems
    assert str(tmp_path) not in text
    assert (packs / "gen0_best.json").read_text() == "{not json"  # left where it was
    assert (state / "state.json").is_symlink()
    assert sorted(p.name for p in packs.iterdir()) == ["gen0_best.json"]


# --- command line -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kloros-orchestrator")
    cli_report.add_parsers(p.add_subparsers(dest="command", required=True))
    return p


def test_report_command_writes_under_state_dir_by_default_and_prints_the_path(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "state"
    shutil.copytree(state, copy, symlinks=True)
    assert cli_report.run(_parser().parse_args(["report", "--state-dir", str(copy)])) == 0
    assert capsys.readouterr().out.strip() == str(copy / "report" / INDEX)
    out = tmp_path / "elsewhere"
    config = tmp_path / "dream.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(copy)}))
    assert cli_report.run(_parser().parse_args(["report", "--config", str(config), "--out", str(out)])) == 0
    assert capsys.readouterr().out.strip() == str(out / INDEX)
    assert cli_report.run(_parser().parse_args(["report", "--state-dir", str(tmp_path / "none")])) == 1
    assert "not a directory" in capsys.readouterr().err


def test_report_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        _parser().parse_args(["report", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--state-dir D" in text and "--out DIR" in text and "exit codes:\n  0 written" in text
    assert "example:\n  kloros-orchestrator report --config" in text
    assert "nothing is fetched" in text


def test_figures_draw_the_edge_cases_without_a_warning() -> None:
    """Every trial failed; one generation with no interval; a candidate with no pack; one pacing
    decision; a forest row without a CI; text with TeX in it. Warnings are errors here."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one_trial = GenerationBest(0, "g0c0", 0.1, None, False, True, "one trial")
        no_ci = FameEntry(
            "d", "$c$", 0, None, None, None, {}, [KpiDelta("idle", "watts", 1.0, None, 1)], None
        )
        drawn = [
            figures.failures([FailureGroup("timeout", 3, ["cpu"], "timeout: late")], 3, 3),
            figures.scores("d", [one_trial], [], [(0, "adopted $x^2$")]),
            figures.scores("d", [], [Candidate("d", 0, "g0c0", -0.2, None, 2, "behind")], []),
            figures.pacing([PacingPoint(1_800_000_000.0, 0.0, "r", True)]),
            figures.forest([no_ci]),
        ]
    for png in drawn:
        assert png_size(png) > (100, 50)


def test_matplotlib_is_imported_by_the_report_figures_alone() -> None:
    package = Path(figures.__file__).resolve().parent.parent
    importers = sorted(
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if re.search(r"^\s*(import|from)\s+matplotlib\b", p.read_text(), re.M)
    )
    assert importers == ["report/figures.py"]


def test_only_rendering_loads_matplotlib() -> None:
    """The CLI module and the report package import without matplotlib; it comes with a figure."""
    code = (
        "import sys\n"
        "import kloros_orchestrator.cli_report, kloros_orchestrator.report\n"
        "assert 'matplotlib' not in sys.modules, 'loaded on import'\n"
        "from kloros_orchestrator.report import figures\n"
        "assert 'matplotlib' in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
