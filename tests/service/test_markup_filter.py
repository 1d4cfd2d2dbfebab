"""The tool-call markup filter alone (pure logic): seeded splits of texts holding markup,
partial markup and text that only looks like its start. The filter inside a request's
parsing, on vLLM's parsers and a real tokenizer: tests/service/test_output_parsing.py."""

from __future__ import annotations

import random
import re

import pytest

from service.markup_filter import MarkupFilter

MARKUP = ("<tool_call>", "</tool_call>")
# Pieces that look like the start of the markup but are not it.
LOOKALIKES = ["<", "<t", "<tool", "<tool_", "<tool_call", "</", "</tool_cal", "tool_call>", "<<", "<tool call>", ">"]
WORDS = ["Sure.", " ", "\n", "the", "é", "日本", "🙂", "a<b", "x>y"]


def _reference(text: str) -> str:
    """Markup removed until none is left (an independent spelling: re.sub to a fixed point)."""
    pattern = "|".join(re.escape(m) for m in MARKUP)
    while (shorter := re.sub(pattern, "", text)) != text:
        text = shorter
    return text


def _text(rng: random.Random) -> str:
    pieces = [rng.choice(WORDS + LOOKALIKES + list(MARKUP)) for _ in range(rng.randint(0, 14))]
    where = rng.choice(["start", "middle", "end", "none"])
    if where == "start":
        pieces.insert(0, rng.choice(MARKUP))
    elif where == "end":
        pieces.append(rng.choice(MARKUP + tuple(LOOKALIKES)))
    text = "".join(pieces)
    if rng.random() < 0.2:  # markup inside markup: <tool_<tool_call>call>
        outer, inner = rng.choice(MARKUP), rng.choice(MARKUP)
        cut = rng.randint(1, len(outer) - 1)
        text += outer[:cut] + inner + outer[cut:]
    return text


def _split(rng: random.Random, text: str) -> list[str]:
    """``text`` cut at random places: one character at a time (byte tokens), pieces of a
    few characters (sub-words), or whole, with empty deltas between."""
    mode = rng.choice(["chars", "pieces", "whole"])
    if mode == "whole":
        return [text]
    out, i = [], 0
    while i < len(text):
        n = 1 if mode == "chars" else rng.randint(1, 5)
        out.append(text[i : i + n])
        i += n
        if rng.random() < 0.1:
            out.append("")
    return out


def test_seeded_splits_return_exactly_the_text_without_markup():
    rng = random.Random(14)
    held_back = 0
    for _ in range(3000):
        text = _text(rng)
        f = MarkupFilter(MARKUP)
        returned = []
        for piece in _split(rng, text):
            returned.append(f.feed(piece))
            held_back += bool(f.held)
        returned.append(f.flush())
        whole = "".join(returned)
        assert whole == _reference(text), (text, returned)
        assert not any(m in whole for m in MARKUP), returned
    assert held_back > 1000  # the generator did split markup across pieces


@pytest.mark.parametrize(
    ("pieces", "returned"),
    [
        (["Sure.", "<", "tool", "_call", ">", "\n"], ["Sure.", "", "", "", "", "\n"]),
        (["<tool", " is a word"], ["", "<tool is a word"]),
        (["a <tool_ca"], ["a "]),  # held until the end of the stream ...
        (["</tool_call", ">bye"], ["", "bye"]),
        (["<tool_call<tool_call>x"], ["<tool_callx"]),
        (["<tool_<tool_ca", "ll>call>", "!"], ["", "", "!"]),  # removing the inner one forms another
        (["<tool_<tool_ca", "ll>x"], ["", "<tool_x"]),
    ],
    ids=["bytes", "lookalike", "held", "end-markup", "lookalike-then-markup", "nested", "nested-then-text"],
)
def test_each_piece_returns_what_is_certainly_not_markup(pieces, returned):
    f = MarkupFilter(MARKUP)
    assert [f.feed(p) for p in pieces] == returned


def test_what_is_held_at_the_end_of_the_stream_is_text():
    f = MarkupFilter(MARKUP)
    assert f.feed("a <tool_ca") == "a " and f.flush() == "<tool_ca" and f.flush() == ""


def test_without_markup_the_filter_passes_everything():
    f = MarkupFilter(())
    assert not f.active and f.feed("<tool_call>") == "<tool_call>" and f.flush() == ""
