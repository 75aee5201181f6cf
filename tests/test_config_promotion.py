"""``promotion.mode`` and ``domain_options.<domain>.unit``: additive keys, checked like the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from kloros_orchestrator.config import class_options, load_config
from kloros_orchestrator.errors import ConfigError


def _cfg(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "dream.yaml"
    p.write_text(f"state_dir: {tmp_path / 'state'}\n" + body)
    return p


def test_promotion_defaults_to_manual(tmp_path: Path) -> None:
    assert load_config(_cfg(tmp_path, "")).config.promotion.mode == "manual"
    assert load_config(_cfg(tmp_path, "promotion: {mode: auto}\n")).config.promotion.mode == "auto"


def test_bad_promotion_mode_and_bad_unit_are_both_reported(tmp_path: Path) -> None:
    body = "promotion: {mode: sometimes}\ndomain_options:\n  cpu: {unit: 'my app; rm -rf'}\n"
    with pytest.raises(ConfigError) as e:
        load_config(_cfg(tmp_path, body))
    text = "\n".join(e.value.problems)
    assert "promotion.mode" in text and "sometimes" in text
    assert "domain_options.cpu.unit" in text and "not a systemd unit name" in text


def test_unit_is_allowed_on_every_domain_and_never_reaches_the_class(tmp_path: Path) -> None:
    loaded = load_config(_cfg(tmp_path, "domain_options:\n  memory: {unit: web.service}\n"))
    opts = loaded.config.domain_options["memory"]
    assert opts["unit"] == "web.service"
    assert class_options(opts) == {}
    assert class_options({"kind": "generic", "unit": "a", "knobs": {}}) == {"knobs": {}}
