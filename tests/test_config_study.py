"""``study``: local by default, a PostgreSQL URI with a name otherwise; the URI's password never
appears in a problem line (README, "Running a fleet")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kloros_orchestrator.config import load_config
from kloros_orchestrator.errors import ConfigError
from kloros_orchestrator.fleet.dsn import default_host_id, redact

SECRET = "s3cr3t-pw"


def _load(tmp_path: Path, study: dict[str, Any]) -> Any:
    p = tmp_path / "dream.yaml"
    p.write_text(
        yaml.safe_dump({"state_dir": str(tmp_path / "s"), "dream": {"domains": ["cpu"]}, "study": study})
    )
    return load_config(p)


def _problems(tmp_path: Path, study: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, study)
    return e.value.problems


def test_local_is_the_default(tmp_path: Path) -> None:
    p = tmp_path / "dream.yaml"
    p.write_text(yaml.safe_dump({"dream": {"domains": ["cpu"]}}))
    st = load_config(p).config.study
    assert st.store == "local" and not st.shared and st.name is None


def test_a_database_store_with_a_name_loads(tmp_path: Path) -> None:
    st = _load(
        tmp_path, {"store": f"postgresql://k:{SECRET}@db/kl", "name": "web", "lease_seconds": 60}
    ).config.study
    assert st.shared and st.name == "web" and st.lease_seconds == 60


def test_name_is_required_and_bad_values_are_named_without_the_password(tmp_path: Path) -> None:
    out = _problems(tmp_path, {"store": f"postgresql://k:{SECRET}@db/kl"})
    assert any("study.name: required" in p for p in out), out
    out = _problems(tmp_path, {"store": f"mysql://k:{SECRET}@db/kl", "name": "web"})
    assert any("study.store: must be 'local' or a URI starting with postgresql://" in p for p in out), out
    out = _problems(
        tmp_path,
        {"store": f"postgres://k:{SECRET}@db/kl", "name": "", "lease_seconds": 10, "heartbeat_seconds": 0},
    )
    text = "\n".join(out)
    assert "study.name: must not be empty" in text
    assert "study.lease_seconds: at least 30 s" in text
    assert "study.heartbeat_seconds: must be > 0" in text
    out = _problems(tmp_path, {"store": "local", "lease_seconds": 40, "heartbeat_seconds": 30})
    assert any("study.heartbeat_seconds: at most half of study.lease_seconds" in p for p in out), out
    for study in ({"store": f"mysql://k:{SECRET}@db"}, {"store": f"postgresql://k:{SECRET}@db", "name": ""}):
        assert SECRET not in "\n".join(_problems(tmp_path, study))
    assert "study.bogus: unknown key" in "\n".join(_problems(tmp_path, {"bogus": 1}))


def test_redact_hides_passwords_and_keeps_the_rest() -> None:
    assert (
        redact(f"postgresql://kl:{SECRET}@db.example:5432/fleet")
        == "postgresql://kl:***@db.example:5432/fleet"
    )
    assert redact(f"postgres://db/x?user=a&password={SECRET}&sslmode=on") == (
        "postgres://db/x?user=a&password=***&sslmode=on"
    )
    assert redact("postgresql://kl@db/fleet") == "postgresql://kl@db/fleet"


def test_default_host_ids_differ_per_state_dir_and_stay_put(tmp_path: Path) -> None:
    a, b = default_host_id(tmp_path / "a", "n1"), default_host_id(tmp_path / "b", "n1")
    assert a != b and a.startswith("n1-") and a == default_host_id(tmp_path / "a", "n1")
