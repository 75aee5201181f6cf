"""conversation domain: end-to-end conversational turn, measured by an operator-supplied command."""

from __future__ import annotations

from typing import ClassVar

from kloros_orchestrator.spica.command import CommandDomain
from kloros_orchestrator.spica.registry import register


@register
class SpicaConversation(CommandDomain):
    """Command domain; ``disabled`` until ``options.command`` is configured (see CommandDomain)."""

    name: ClassVar[str] = "conversation"
    description: ClassVar[str] = "end-to-end conversational turn"
