"""Tool-call markup kept out of the answer text: a filter over the streamed content.

vLLM's tool parsers recognise their start and end markup (qwen3_coder: ``<tool_call>`` and
``</tool_call>``) by token id when the tokenizer has those special tokens, so the same
markup spelled with byte or sub-word tokens (a grammar or a sampler can produce either) is
passed through as content, a piece per delta, while the call inside it is still parsed
from the ``<function=`` that follows (verify-14c D3). This filter sits after vLLM's parser
(``service.output_parsing.RequestParsing.feed``): it parses nothing, it only removes the
markup strings from the content it is given and holds back a trailing piece that may be
the start of one until the next delta (or the end of the stream) settles it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class MarkupFilter:
    """Removes the ``markup`` strings from a stream of text pieces, including an occurrence
    that only forms once an inner one is removed (``<tool_<tool_call>call>`` leaves nothing).

    ``feed(piece)`` returns the text that no later piece can turn into markup; the rest is
    held until a later piece completes the markup (dropped) or rules it out (returned), and
    ``flush()`` returns what is held at the end of the stream (an incomplete markup string
    is text). The concatenation of all returned text equals the pieces' concatenation with
    markup removed until none is left: one result whatever the order of removals, as long
    as no markup string's end is another's start (true of every start/end pair vLLM's
    parsers declare: they begin with ``<`` or ``[`` and end with ``>`` or ``]``).

    Each held character is kept with the length of the longest tail ending at it that is
    the start of a markup string; a removal ends at the last held character, so what may
    still be removed is that tail, and, were it removed, the tail before it, and so on."""

    def __init__(self, markup: Iterable[str]) -> None:
        self._markup = tuple(sorted({m for m in markup if m}, key=len, reverse=True))
        self._longest = max(map(len, self._markup), default=0)
        self._chars: list[str] = []
        self._depths: list[int] = []

    @property
    def active(self) -> bool:
        return bool(self._markup)

    @property
    def held(self) -> str:
        return "".join(self._chars)

    def feed(self, piece: str) -> str:
        if not self._markup:
            return piece
        chars, depths = self._chars, self._depths
        for ch in piece:
            chars.append(ch)
            tail = "".join(chars[-self._longest :])
            whole = next((m for m in self._markup if tail.endswith(m)), None)
            if whole is not None:
                del chars[len(chars) - len(whole) :], depths[len(depths) - len(whole) + 1 :]
                continue
            depths.append(self._depth(tail))
        # From the top, follow each open start back to the character before it.
        keep_from, at = len(chars), len(chars) - 1
        while at >= 0 and depths[at] > 0:
            keep_from = at - depths[at] + 1
            at = keep_from - 1
        out = "".join(chars[:keep_from])
        del chars[:keep_from], depths[:keep_from]
        return out

    def flush(self) -> str:
        held = "".join(self._chars)
        self._chars.clear()
        self._depths.clear()
        return held

    def _depth(self, tail: str) -> int:
        """Length of the longest end of ``tail`` that is a proper start of a markup string."""
        for n in range(min(self._longest - 1, len(tail)), 0, -1):
            end = tail[len(tail) - n :]
            if any(m.startswith(end) for m in self._markup):
                return n
        return 0


def tool_markup(tool_parser: Any) -> tuple[str, ...]:
    """The start and end markup of a vLLM tool parser instance (``()`` when it declares none).

    Legacy parsers name them ``tool_call_start_token`` / ``tool_call_end_token``
    (``Hermes2ProToolParser`` and others); parsers built on vLLM's ``ParserEngine``
    (``ParserEngineToolAdapter``: qwen3_coder, nemotron_v3's tools) declare them as the
    ``TOOL_START`` and ``TOOL_END`` terminals of their ``ParserEngineConfig``, every
    spelling of each."""
    found: list[str] = []
    for name in ("tool_call_start_token", "tool_call_end_token"):
        value = getattr(tool_parser, name, None)
        if isinstance(value, str) and value:
            found.append(value)
    engine = getattr(tool_parser, "_parser_engine", None)  # ParserEngineToolAdapter's engine
    config = getattr(engine, "parser_engine_config", None)
    terminals = getattr(config, "terminals", None) or {}
    for name in ("TOOL_START", "TOOL_END"):
        value = terminals.get(name)
        found.extend([value] if isinstance(value, str) else list(value or ()))
    return tuple(dict.fromkeys(m for m in found if m))
