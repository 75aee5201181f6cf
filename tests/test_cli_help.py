"""Every sub-command's --help ends with its exit codes and an example."""

from __future__ import annotations

import pytest

from kloros_orchestrator.cli import _parser
from kloros_orchestrator.cli_help import EPILOGS


def test_every_subcommand_documents_exit_codes_and_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser()
    names = [a for a in parser._subparsers._group_actions[0].choices]  # type: ignore[union-attr]
    assert set(names) - {"report"} <= set(EPILOGS)
    for name in names:
        with pytest.raises(SystemExit) as e:
            parser.parse_args([name, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "exit codes:" in text and "\n  0 " in text, name
        assert f"example:\n  kloros-orchestrator {name}" in text, name
