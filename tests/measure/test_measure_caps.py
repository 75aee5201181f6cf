from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kloros_orchestrator.measure.caps import CapLimit, check_caps, load_caps, parse_caps
from kloros_orchestrator.model import P95, STANDARD_KPIS, TEMP, THROUGHPUT, WATTS

KNOWN = set(STANDARD_KPIS)
F = "caps/cpu.yaml"


def test_number_and_mapping_forms() -> None:
    raw = yaml.safe_load(
        f"{P95}: 500\n{TEMP}: {{max: 85.5}}\n{THROUGHPUT}: {{min: 10}}\n{WATTS}: {{min: 1, max: 200}}\n"
    )
    caps, problems = parse_caps(raw, known_kpis=KNOWN, file=F)
    assert problems == []
    assert caps == {
        P95: CapLimit(max=500.0),
        TEMP: CapLimit(max=85.5),
        THROUGHPUT: CapLimit(min=10.0),
        WATTS: CapLimit(min=1.0, max=200.0),
    }


def test_empty_document_means_no_caps() -> None:
    assert parse_caps(None, known_kpis=KNOWN, file=F) == ({}, [])


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ([1, 2], f"{F}: (top level): expected a mapping"),
        ({"p95": 5}, f"{F}: p95: unknown KPI"),
        ({P95: "500"}, f"{F}: {P95}: expected a finite number"),
        ({P95: True}, f"{F}: {P95}: expected a finite number"),
        ({P95: float("nan")}, f"{F}: {P95}: expected a finite number"),
        ({P95: None}, f"{F}: {P95}: expected a finite number"),
        ({P95: {"max": "x"}}, f"{F}: {P95}.max: expected a finite number"),
        ({P95: {"upper": 3}}, f"{F}: {P95}.upper: unknown field"),
        ({P95: {}}, f"{F}: {P95}: empty limit"),
        ({P95: {"min": 5, "max": 2}}, f"{F}: {P95}: min 5.0 is greater than max 2.0"),
        ({3: 5}, f"{F}: 3: cap names must be KPI names"),
    ],
)
def test_problems_name_file_and_key(raw: object, problem: str) -> None:
    caps, problems = parse_caps(raw, known_kpis=KNOWN, file=F)
    assert caps == {}
    assert len(problems) == 1
    assert problems[0].startswith(problem), problems


def test_good_entries_survive_next_to_bad_ones() -> None:
    caps, problems = parse_caps({P95: 100, "bogus": 1, TEMP: "hot"}, known_kpis=KNOWN, file=F)
    assert caps == {P95: CapLimit(max=100.0)}
    assert len(problems) == 2


def test_check_caps_reports_readable_breaches() -> None:
    caps = {P95: CapLimit(max=500.0), THROUGHPUT: CapLimit(min=100.0), TEMP: CapLimit(min=0.0, max=90.0)}
    assert check_caps(caps, {P95: 812.0, THROUGHPUT: 12.0, TEMP: 50.0}) == [
        "p95_latency_us 812.0 > cap 500.0",
        "throughput_ops 12.0 < cap min 100.0",
    ]
    assert check_caps(caps, {P95: 500.0, THROUGHPUT: 100.0, TEMP: 90.0}) == []


def test_absent_kpis_are_not_breaches() -> None:
    caps = {P95: CapLimit(max=500.0), WATTS: CapLimit(max=1.0)}
    assert check_caps(caps, {TEMP: 99.0}) == []
    assert check_caps(caps, {}) == []
    assert check_caps(caps, {WATTS: 1.5}) == ["watts 1.5 > cap 1.0"]


def test_load_caps_file(tmp_path: Path) -> None:
    good = tmp_path / "cpu.yaml"
    good.write_text(f"{TEMP}: 90\n")
    assert load_caps(good, known_kpis=KNOWN) == ({TEMP: CapLimit(max=90.0)}, [])
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [\n")
    caps, problems = load_caps(bad, known_kpis=KNOWN, file="caps/bad.yaml")
    assert caps == {} and problems[0].startswith("caps/bad.yaml: (file): not valid YAML")
    caps, problems = load_caps(tmp_path / "none.yaml", known_kpis=KNOWN)
    assert caps == {} and "cannot read" in problems[0]
