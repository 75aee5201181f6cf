"""asr_tts domain: speech recognition and synthesis, measured by an operator-supplied command."""

from __future__ import annotations

from typing import ClassVar

from kloros_orchestrator.spica.command import CommandDomain
from kloros_orchestrator.spica.registry import register


@register
class SpicaAsrTts(CommandDomain):
    """Command domain; ``disabled`` until ``options.command`` is configured (see CommandDomain)."""

    name: ClassVar[str] = "asr_tts"
    description: ClassVar[str] = "speech recognition and synthesis"
