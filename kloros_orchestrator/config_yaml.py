"""Reading configuration YAML without trusting it: bounded size, depth and alias expansion.

Every file the configuration names (``dream.yaml``, ``regimes/<domain>.yaml``,
``caps/<domain>.yaml``) is read here, and whatever a file holds ends as a document or as one
``file: where: problem`` line, never as another exception:

* the file is read as bytes, at most :data:`MAX_FILE_BYTES`, and decoded as strict UTF-8;
* nesting deeper than :data:`MAX_DEPTH` levels is refused while composing, before Python's own
  recursion limit is near (20,000 nested ``[`` would otherwise end in RecursionError);
* anchors and aliases are allowed, but the document they expand to is measured while composing
  (every scalar counts its characters, every collection one) and refused beyond
  :data:`MAX_EXPANDED`. Without aliases a document can never reach that budget, so the check only
  ever stops alias bombs ("billion laughs") and aliases that refer to their own anchor;
* scalars Python cannot turn into a value (a date like 2024-13-45, an integer literal thousands of
  digits long, a ``"\\udc80"`` escape that is no text) are problems located by line.

Values that parse but make no sense (``.inf``, NUL characters, integers beyond any range) are left to
the checks that know which key they belong to (``config_checks``).
"""

from __future__ import annotations

import os
import reprlib
import stat
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from kloros_orchestrator.errors import ConfigError

MAX_FILE_BYTES: Final = 256 * 1024  # configuration files are a few KiB; this is far above any real one
MAX_DEPTH: Final = 64  # the deepest real key (domain_options.<d>.knobs.<k>.choices[i]) is 5 levels
MAX_EXPANDED: Final = 4 * MAX_FILE_BYTES  # size of the document with every alias expanded
MAX_SCALAR_CHARS: Final = 1000  # an integer or date literal longer than this is not a number a key takes
SHOWN_CHARS: Final = 80  # a value rendered in a problem is cut to this many characters
# What PyYAML's own constructors raise on odd input, besides YAMLError.
_CONSTRUCTOR_FAILURES: Final = (ValueError, OverflowError, KeyError, AttributeError, TypeError, IndexError)

_SHORT = reprlib.Repr()
_SHORT.maxstring = SHOWN_CHARS
_SHORT.maxother = SHOWN_CHARS
_SHORT.maxlong = SHOWN_CHARS
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxset = _SHORT.maxdict = 5
_SHORT.maxlevel = 3


def shown(value: object) -> str:
    """``repr(value)`` cut to about :data:`SHOWN_CHARS` characters, whatever the size of ``value``."""
    if isinstance(value, int) and not isinstance(value, bool) and not -(10**20) < value < 10**20:
        digits = len(str(abs(value)))  # at most MAX_SCALAR_CHARS digits: the loader refuses longer
        return f"{'-' if value < 0 else ''}an integer of {digits} digits"
    text = _SHORT.repr(value)
    if len(text) > SHOWN_CHARS:
        text = text[: SHOWN_CHARS - 3] + "..."
    return text


def _reason(exc: Exception) -> str:
    """ValueError's own words (``month must be in 1..12``); other errors say nothing a user can act on."""
    text = str(exc) if isinstance(exc, ValueError | OverflowError) else "not a value of this type"
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that measures depth and expanded size of every node while composing it."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        # id(node) -> (characters the node expands to, its height); nodes live as long as the loader.
        self._size: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            target = self.anchors.get(getattr(event, "anchor", None))
            if target is not None and id(target) not in self._size:
                raise ComposerError(None, None, "an alias refers to its own anchor", event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is not None:
            self._measure(node)
        return node

    def _measure(self, node: Node) -> None:
        if isinstance(node, ScalarNode):
            size, height = 1 + len(node.value), 1
        else:
            children: list[Node] = []
            if isinstance(node, SequenceNode):
                children = list(node.value)
            elif isinstance(node, MappingNode):
                children = [n for pair in node.value for n in pair]
            measured = [self._size[id(c)] for c in children]
            size = 1 + sum(s for s, _ in measured)
            height = 1 + max((h for _, h in measured), default=0)
        if height > MAX_DEPTH:
            raise ComposerError(
                None, None, f"aliases nest this value deeper than {MAX_DEPTH} levels", node.start_mark
            )
        if size > MAX_EXPANDED:
            raise ComposerError(
                None,
                None,
                f"aliases expand the document beyond {MAX_EXPANDED} characters "
                "(anchors may only share small pieces)",
                node.start_mark,
            )
        self._size[id(node)] = (size, height)

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        # Scalars are built here. A value PyYAML's constructors fail on with a plain Python error
        # (2024-13-45: ValueError; "!!timestamp x": AttributeError; "!!bool x": KeyError) becomes
        # a located YAML problem, and long number literals are refused before int() spends time.
        if not isinstance(node, ScalarNode):
            return super().construct_object(node, deep=deep)
        try:
            node.value.encode("utf-8")
        except UnicodeEncodeError:  # "\udc80": a lone surrogate no file name, log or JSON can hold
            problem = "a lone surrogate escape is not text"
            raise ConstructorError(None, None, problem, node.start_mark) from None
        tag = node.tag.rsplit(":", 1)[-1]
        if tag in ("int", "float", "timestamp") and len(node.value) > MAX_SCALAR_CHARS:
            raise ConstructorError(
                None, None, f"{tag} literal longer than {MAX_SCALAR_CHARS} characters", node.start_mark
            )
        try:
            return super().construct_object(node, deep=deep)
        except _CONSTRUCTOR_FAILURES as exc:
            problem = f"cannot read this value as {tag}: {_reason(exc)}"
            raise ConstructorError(None, None, problem, node.start_mark) from None


def _located(label: str, exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        return f"{label}: (file): not YAML text: {exc.reason} (character #x{exc.character:04x}" + (
            f" at offset {exc.position})"
        )
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}" if mark is not None else "(file)"
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{label}: {where}: invalid YAML: {problem}"


def read_yaml_bytes(data: bytes, label: str) -> Any:
    """The document in ``data`` (None when empty); ConfigError with one located problem otherwise."""
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([f"{label}: (file): larger than {MAX_FILE_BYTES // 1024} KiB"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{label}: (file): not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"]
        ) from None
    try:
        loader = _BoundedLoader(text)  # the reader already refuses control characters here
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError([_located(label, exc)]) from None
    except _CONSTRUCTOR_FAILURES as exc:  # a collection constructor failing outside construct_object
        raise ConfigError([f"{label}: (file): invalid YAML: {_reason(exc)}"]) from None


def read_yaml(path: Path, label: str | None = None) -> Any:
    """Read and parse one configuration file; ConfigError with one ``file: where: problem`` if it fails."""
    name = label if label is not None else str(path)
    try:
        # A FIFO or a device would block or never end: only regular files are opened.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ConfigError([f"{name}: (file): not a regular file"])
        with Path(path).open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except (OSError, ValueError) as exc:  # ValueError: a path with a NUL character
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError([f"{name}: (file): cannot read: {reason}"]) from None
    return read_yaml_bytes(data, name)


__all__ = ["MAX_DEPTH", "MAX_EXPANDED", "MAX_FILE_BYTES", "read_yaml", "read_yaml_bytes", "shown"]
