"""audio domain: audio pipeline (capture, DSP, playback), measured by an operator-supplied command."""

from __future__ import annotations

from typing import ClassVar

from kloros_orchestrator.spica.command import CommandDomain
from kloros_orchestrator.spica.registry import register


@register
class SpicaAudio(CommandDomain):
    """Command domain; ``disabled`` until ``options.command`` is configured (see CommandDomain)."""

    name: ClassVar[str] = "audio"
    description: ClassVar[str] = "audio pipeline (capture, DSP, playback)"
