"""YAML written by users (recipes, device profiles), read within fixed limits.

``yaml.safe_load`` builds no arbitrary objects, but it lets a small file grow without bound: nested
anchors and aliases ("billion laughs") make a 1 KB file stand for billions of values, which explode
as soon as anything walks, prints or saves them, and the pure-Python parser needs tens of seconds
for a megabyte. So the file size is capped before parsing, and the nesting depth and the size after
alias expansion are counted while the document is composed: a hostile file is refused in bounded
time and memory, with a one-line :class:`YamlInputError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .utils import brief, shorten

if TYPE_CHECKING:
    from importlib.abc import Traversable

#: bytes read at most; recipes and device profiles are well under 2 KB
MAX_BYTES = 64 * 1024
#: nesting depth, scalars included; a recipe needs 6 (root, stages, a stage, options, layer_bits, value)
MAX_DEPTH = 32
#: values (scalars, sequences, mappings) after alias expansion
MAX_NODES = 10_000
#: characters of scalar text after alias expansion
MAX_TEXT = 256 * 1024


class YamlInputError(ValueError):
    """A YAML file that is unreadable as YAML or beyond the limits; the caller adds which file."""


def load_yaml(source: Path | Traversable) -> Any:
    """Parse the file ``source`` like ``yaml.safe_load``, within the limits above.

    ``OSError`` (missing, unreadable file) passes through for the caller to word.
    """
    with source.open("rb") as stream:
        data = stream.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YamlInputError(f"larger than {MAX_BYTES} bytes; refused unread")
    return parse_yaml(data)


def parse_yaml(data: str | bytes) -> Any:
    """``yaml.safe_load(data)`` with the depth and expansion limits; errors are one line."""
    loader = _BoundedLoader(data)
    try:
        return loader.get_single_data()
    except YamlInputError:
        raise
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: e.g. an integer of 5000 digits
        raise YamlInputError(f"not valid YAML: {_describe(exc)}") from None
    finally:
        loader.dispose()


def _describe(exc: Exception) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        what = "; ".join(str(part) for part in (exc.context, exc.problem) if part)
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return shorten(what, 200) + where
    return shorten(str(exc), 200)


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that counts every node it composes, an alias as the whole subtree it stands for."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self._depth = self._deepest = 0  # enclosing nodes now; deepest level reached in this subtree
        self._nodes = self._text = 0
        self._anchored: dict[str, tuple[int, int, int]] = {}  # anchor -> nodes, text, height of its subtree

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            self._expand(self.peek_event().anchor)
            return super().compose_node(parent, index)
        event, nodes, text = self.peek_event(), self._nodes, self._text
        outer_deepest, self._deepest = self._deepest, self._depth
        self._add(1, len(getattr(event, "value", "")), self._depth + 1)
        self._depth += 1
        node = super().compose_node(parent, index)
        self._depth -= 1
        if event.anchor is not None:
            self._anchored[event.anchor] = (self._nodes - nodes, self._text - text, self._deepest - self._depth)
        self._deepest = max(outer_deepest, self._deepest)
        return node

    def _expand(self, anchor: str) -> None:
        if anchor in self.anchors and anchor not in self._anchored:
            raise YamlInputError(f"alias {brief(anchor)} refers to the value that contains it")
        nodes, text, height = self._anchored.get(anchor, (0, 0, 0))  # undefined: the composer says so
        self._add(nodes, text, self._depth + height)

    def _add(self, nodes: int, text: int, level: int) -> None:
        self._nodes += nodes
        self._text += text
        self._deepest = max(self._deepest, level)
        if level > MAX_DEPTH:
            raise YamlInputError(f"nested deeper than {MAX_DEPTH} levels (aliases expanded)")
        if self._nodes > MAX_NODES:
            raise YamlInputError(f"more than {MAX_NODES} values (aliases expanded)")
        if self._text > MAX_TEXT:
            raise YamlInputError(f"more than {MAX_TEXT} characters of text (aliases expanded)")
