"""How many elements one request's repeated fields may hold, checked before any
per-element work (issue 10, N1).

Below ``--max-message-bytes`` a request can still carry millions of elements: 5M empty
content parts fit in 10 MB, 1M chat messages in 14 MB. Every per-element step after that
(``list(req.parts)``, a check per part, vLLM's per-stop-string work) is one long C call
that holds the GIL, so the event loop (health checks, other streams, SIGTERM) froze for
seconds to minutes. :func:`check_counts` walks the request with ``len()`` on each repeated
field first (O(1) on a protobuf repeated field) and refuses it before touching more than
the limits allow; the rest of validation then runs off the event loop.

Each repeated field of ``GenerateRequest`` and ``StreamGenerateHeader`` has a limit,
counted over the whole request (the parts of every message together, for example);
``FIELD_LIMITS`` maps each field to its limit, and a test walks the protos so that a new
repeated field cannot be left unbounded. ``google.protobuf.Struct`` values
(``chat_template_kwargs``) are bounded by their encoded size instead.

The elements of a repeated ``string`` field (``sampling.stop``, ``sampling.bad_words``,
``structured_output.choice``) are bounded in bytes too, each and together per field
(``STRING_LIST_FIELDS``; a test walks the protos for repeated ``string``/``bytes`` fields):
256 stop strings of 200 KB each fit in one message, and vLLM matches every stop string
against the text of every step, tokenizes every bad word.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from nanovl.errors import InvalidArgument, ResourceExhausted
from nanovl.units import KiB, MiB

# OpenAI's limit on tools (service.output_parsing.MAX_TOOLS says the same).
MAX_TOOLS = 128

STRUCT = "google.protobuf.Struct"


@dataclass(frozen=True)
class RequestLimits:
    """Most elements of each kind in one request, whatever the message size. Counts are
    over the whole request: ``max_parts`` counts the parts of all messages together."""

    # Chat messages (--max-messages-per-request). A long agentic conversation has hundreds.
    max_messages: int = 4096
    # Content parts, across messages (--max-parts-per-request).
    max_parts: int = 8192
    # Tool calls in assistant messages, across messages.
    max_tool_calls: int = 4096
    # SamplingOptions.stop and bad_words (vLLM has no limit; OpenAI allows 4 stop strings).
    max_stop_strings: int = 256
    max_bad_words: int = 256
    # SamplingOptions.stop_token_ids.
    max_stop_token_ids: int = 1024
    # StructuredOutput.choice.choices.
    max_choices: int = 4096
    # Encoded size of ChatTemplateOptions.chat_template_kwargs (a Struct).
    max_template_kwargs_bytes: int = 1 * MiB
    # UTF-8 bytes of one string of a client string list (STRING_LIST_FIELDS: stop,
    # bad_words, choice) (--max-list-string-bytes). A stop string or banned word is a few
    # words; 4 KiB is a paragraph.
    max_list_string_bytes: int = 4 * KiB
    # UTF-8 bytes of all strings of one such field together (--max-list-bytes): 256 stop
    # strings of 512 bytes each; as --max-structured-output-bytes, which also holds a choice.
    max_list_bytes: int = 128 * KiB

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not (isinstance(value, int) and value > 0):
                raise InvalidArgument(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")


# Where each limit comes from, for the message: the flag operators can raise, or why it is fixed.
_SOURCES = {
    "max_messages": "--max-messages-per-request",
    "max_parts": "--max-parts-per-request",
    "max_list_string_bytes": "--max-list-string-bytes",
    "max_list_bytes": "--max-list-bytes",
}

# The repeated string fields a client fills (proto full name → its name in a request):
# every repeated string/bytes field of a request that is not media (media bytes are
# bounded by --max-message-bytes / --max-request-bytes and the decoders' limits).
STRING_LIST_FIELDS = {
    "nanovl.v1.SamplingOptions.stop": "sampling.stop",
    "nanovl.v1.SamplingOptions.bad_words": "sampling.bad_words",
    "nanovl.v1.Choices.choices": "sampling.structured_output.choice",
}


@dataclass(frozen=True)
class _BytesLimit:
    """Bytes of each string of a repeated string field, and of all of them together."""

    field: str  # as a client names it
    element: int
    total: int

    def check_element(self, size: int) -> None:
        if size > self.element:
            raise ResourceExhausted(
                f"a string in {self.field} is {size} bytes, over this server's limit of {self.element} bytes "
                f"per string ({_SOURCES['max_list_string_bytes']}); send shorter strings"
            )

    def check_total(self, size: int) -> None:
        if size > self.total:
            raise ResourceExhausted(
                f"the strings in {self.field} are more than {self.total} bytes together, this server's limit "
                f"({_SOURCES['max_list_bytes']}); send fewer or shorter strings"
            )


def bytes_limits(limits: RequestLimits) -> dict[str, _BytesLimit]:
    """Every field of ``STRING_LIST_FIELDS`` (proto full name) → its byte limits."""
    return {
        name: _BytesLimit(field, limits.max_list_string_bytes, limits.max_list_bytes)
        for name, field in STRING_LIST_FIELDS.items()
    }


@dataclass(frozen=True)
class _Limit:
    what: str  # the counted elements, as a client names them
    limit: int
    source: str  # the flag, or the rule the limit comes from
    # RESOURCE_EXHAUSTED: a server limit (a smaller request succeeds). INVALID_ARGUMENT:
    # the request cannot make sense (more distinct token ids than the vocabulary has).
    server_limit: bool = True

    def refuse(self) -> None:
        if self.server_limit:
            raise ResourceExhausted(
                f"the request has more than {self.limit} {self.what}, this server's limit ({self.source}); "
                "send fewer, or split the request"
            )
        raise InvalidArgument(f"the request has more than {self.limit} {self.what} ({self.source})")


def field_limits(limits: RequestLimits, *, vocab_size: int) -> dict[str, _Limit]:
    """Every repeated field of the request messages (proto full name) → its limit.
    ``allowed_token_ids`` and ``logit_bias`` hold at most the vocabulary's distinct ids."""

    def server(attr: str, what: str) -> _Limit:
        return _Limit(what, getattr(limits, attr), _SOURCES.get(attr, f"RequestLimits.{attr}"))

    vocab = _Limit("token ids in sampling.allowed_token_ids", vocab_size, "the vocabulary size", server_limit=False)
    bias = _Limit("entries in sampling.logit_bias", vocab_size, "the vocabulary size", server_limit=False)
    tools = _Limit("tools", MAX_TOOLS, "OpenAI's limit of 128 tools per request")
    parts = server("max_parts", "content parts (counted over all messages)")
    calls = server("max_tool_calls", "tool calls in messages (counted over all messages)")
    return {
        "nanovl.v1.GenerateRequest.parts": parts,
        "nanovl.v1.GenerateRequest.messages": server("max_messages", "messages"),
        "nanovl.v1.GenerateRequest.tools": tools,
        "nanovl.v1.Message.parts": parts,
        "nanovl.v1.Message.tool_calls": calls,
        "nanovl.v1.StreamGenerateHeader.parts": parts,
        "nanovl.v1.StreamGenerateHeader.messages": server("max_messages", "messages"),
        "nanovl.v1.StreamGenerateHeader.tools": tools,
        "nanovl.v1.DeclaredMessage.parts": parts,
        "nanovl.v1.DeclaredMessage.tool_calls": calls,
        "nanovl.v1.SamplingOptions.stop": server("max_stop_strings", "stop strings in sampling.stop"),
        "nanovl.v1.SamplingOptions.bad_words": server("max_bad_words", "words in sampling.bad_words"),
        "nanovl.v1.SamplingOptions.stop_token_ids": server(
            "max_stop_token_ids", "token ids in sampling.stop_token_ids"
        ),
        "nanovl.v1.SamplingOptions.allowed_token_ids": vocab,
        "nanovl.v1.SamplingOptions.logit_bias": bias,
        "nanovl.v1.Choices.choices": server("max_choices", "strings in sampling.structured_output.choice"),
    }


@functools.cache
def _holds_counted(message_type: Descriptor) -> bool:
    """Whether a message of this type can hold a repeated field or a Struct (else the walk
    skips it: a content part has neither, and a request may have thousands)."""
    if message_type.GetOptions().map_entry:
        return False

    def visit(t: Descriptor, seen: frozenset[str]) -> bool:
        if t.full_name == STRUCT:
            return True
        for fd in t.fields:
            if fd.is_repeated:
                return True
            sub = fd.message_type
            if sub is not None and sub.full_name not in seen and visit(sub, seen | {t.full_name}):
                return True
        return False

    return visit(message_type, frozenset())


class RequestCounter:
    """Checks requests against ``field_limits``; built once per server."""

    def __init__(self, limits: RequestLimits, *, vocab_size: int) -> None:
        self.limits = limits
        self._by_field = field_limits(limits, vocab_size=vocab_size)
        self._bytes = bytes_limits(limits)

    def check(self, request: Message) -> None:
        """Raise ``ResourceExhausted`` / ``InvalidArgument`` if any repeated field, counted
        over the whole request, holds more than its limit. Touches at most the limits'
        worth of elements: each field's ``len()`` is compared with what is left of its
        limit before its elements are visited. Cost: microseconds for a request within
        the limits' order of magnitude."""
        counts: dict[int, int] = {}
        self._walk(request, counts)

    def _walk(self, msg: Message, counts: dict[int, int]) -> None:
        for fd, value in msg.ListFields():
            if fd.message_type is not None and fd.message_type.full_name == STRUCT:
                self._check_struct(fd, value)
                continue
            if fd.is_repeated:
                limit = self._by_field.get(fd.full_name)
                if limit is None:  # a field added without a limit: the walk test catches it
                    raise AssertionError(f"no request limit for repeated field {fd.full_name}")
                key = id(limit)
                total = counts.get(key, 0) + len(value)
                if total > limit.limit:
                    limit.refuse()
                counts[key] = total
                if (strings := self._bytes.get(fd.full_name)) is not None:
                    size = 0
                    for s in value:  # at most the count limit's worth, checked above
                        n = len(s.encode()) if isinstance(s, str) else len(s)
                        strings.check_element(n)
                        size += n
                    strings.check_total(size)
                if fd.message_type is not None and _holds_counted(fd.message_type):
                    for element in value:
                        self._walk(element, counts)
            elif fd.message_type is not None and _holds_counted(fd.message_type):
                self._walk(value, counts)

    def _check_struct(self, fd: FieldDescriptor, value: Message | _Sized) -> None:
        size = value.ByteSize()
        if size > self.limits.max_template_kwargs_bytes:
            raise ResourceExhausted(
                f"{fd.name} is {size} bytes encoded, over this server's limit of "
                f"{self.limits.max_template_kwargs_bytes} bytes (RequestLimits.max_template_kwargs_bytes)"
            )


class _Unwalkable(Exception):
    """Bytes the wire walk cannot follow: truncated, a group (proto2's wire types 3 and 4,
    which no nanovl message has), an invalid wire type. Refused before any parse: a parser
    would otherwise read the whole message (on the event loop) before finding them."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Unwalkable
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


_HIGH_BYTES = bytes(range(128))  # deleting these leaves a varint blob's continuation bytes
_FIXED_SIZE = {
    FieldDescriptor.TYPE_DOUBLE: 8,
    FieldDescriptor.TYPE_FIXED64: 8,
    FieldDescriptor.TYPE_SFIXED64: 8,
    FieldDescriptor.TYPE_FLOAT: 4,
    FieldDescriptor.TYPE_FIXED32: 4,
    FieldDescriptor.TYPE_SFIXED32: 4,
}
_LENGTH_DELIMITED = (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)


# Fields the limits do not count, walked at most this many times per request: protobuf keeps
# unknown fields and lets a singular field repeat (the last wins), so a client could send
# millions of them, each a step of this walk on the event loop (1M took 13.6 s).
MAX_UNCOUNTED_FIELDS = 1024
# Deepest message nesting the wire walk follows; nanovl's messages nest under 10 deep
# (GenerateRequest > Message > ContentPart > Video > ...) and none is recursive (Struct,
# the one recursive type, is skipped by size), so only a hostile encoder goes deeper.
MAX_WIRE_DEPTH = 32
_UNCOUNTED = -1  # their key in the walk's counts


class WireCounter:
    """The same limits as :class:`RequestCounter`, counted on a request's wire bytes before
    protobuf parses them.

    grpc.aio parses a request on the event loop, and upb's parser holds the GIL for the
    whole message (on a thread too): 32M empty parts (61 MiB) took 5.3 s. This walk reads
    tags and lengths only, skips scalar, string and bytes fields (text, media bytes) by
    their length, and descends into every message field the descriptors name (a content
    part, an image, a tool, a map entry: verify-10d F3, 20M unknown fields inside one part
    took upb 2.2 s on the loop), a ``Struct`` excepted (bounded by its encoded size,
    ``RequestLimits.max_template_kwargs_bytes``). The unknown-field cap and the refusal of
    groups hold at every depth, nesting past ``MAX_WIRE_DEPTH`` is refused, and the walk
    stops at the first limit passed, so it touches at most the limits' worth of fields
    (milliseconds) whatever the message holds. Bytes it cannot follow (``_Unwalkable``)
    are refused: InvalidArgument."""

    def __init__(self, counter: RequestCounter, root: Descriptor) -> None:
        self._counter = counter
        self._root = root

    def check(self, data: bytes) -> None:
        """Raise ``ResourceExhausted`` / ``InvalidArgument`` as ``RequestCounter.check`` would,
        and ``InvalidArgument`` for more than ``MAX_UNCOUNTED_FIELDS`` fields the limits do not
        count (unknown field numbers, a singular field sent again): the walk itself must stay
        bounded, and no client of this API sends them in numbers."""
        try:
            self._walk(self._root, data, 0, len(data), {}, 0)
        except _Unwalkable:
            raise InvalidArgument(
                f"the request is not a valid {self._root.full_name}: its wire bytes are truncated or hold a "
                "protobuf group or an invalid wire type (no field of this API is a group)"
            ) from None

    def _walk(self, desc: Descriptor, data: bytes, pos: int, end: int, counts: dict[int, int], depth: int) -> None:
        if depth > MAX_WIRE_DEPTH:
            raise InvalidArgument(
                f"the request nests messages more than {MAX_WIRE_DEPTH} deep (at {desc.full_name}): "
                "no message of nanovl's API is nested that deep"
            )
        by_field = self._counter._by_field
        by_bytes = self._counter._bytes
        fields = desc.fields_by_number
        seen: set[int] = set()  # singular fields met at this level
        while pos < end:
            tag = data[pos]  # one-byte varints inline: most tags and short lengths
            if tag < 0x80:
                pos += 1
            else:
                tag, pos = _varint(data, pos)
            wire_type, fd = tag & 7, fields.get(tag >> 3)
            start = pos
            if wire_type == 2:
                length = data[pos] if pos < end else 0x80
                if length < 0x80:
                    start = pos + 1
                else:
                    length, start = _varint(data, pos)
                pos = start + length
            elif wire_type == 0:
                _, pos = _varint(data, pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            else:
                raise _Unwalkable
            if pos > end:
                raise _Unwalkable
            if fd is None or (not fd.is_repeated and fd.number in seen):
                counts[_UNCOUNTED] = counts.get(_UNCOUNTED, 0) + 1
                if counts[_UNCOUNTED] > MAX_UNCOUNTED_FIELDS:
                    raise InvalidArgument(
                        f"the request has more than {MAX_UNCOUNTED_FIELDS} unknown or repeated singular fields "
                        f"(in {desc.full_name}): it was not written by a protobuf encoder of nanovl's API"
                    )
                if fd is None:
                    continue
            elif not fd.is_repeated:
                seen.add(fd.number)
            sub = fd.message_type
            if fd.is_repeated:
                limit = by_field.get(fd.full_name)
                if limit is None:
                    raise AssertionError(f"no request limit for repeated field {fd.full_name}")
                n = 1
                if wire_type == 2 and fd.type not in _LENGTH_DELIMITED:  # packed scalars
                    blob = data[start:pos]
                    size = _FIXED_SIZE.get(fd.type)
                    n = len(blob) // size if size else len(blob) - len(blob.translate(None, _HIGH_BYTES))
                key = id(limit)
                counts[key] = counts.get(key, 0) + n
                if counts[key] > limit.limit:
                    limit.refuse()
                if wire_type == 2 and (strings := by_bytes.get(fd.full_name)) is not None:
                    strings.check_element(pos - start)
                    # Over the whole request (a SamplingOptions sent twice is merged by protobuf).
                    bkey = id(strings)
                    counts[bkey] = counts.get(bkey, 0) + pos - start
                    strings.check_total(counts[bkey])
                if sub is not None and wire_type == 2 and sub.full_name != STRUCT:
                    self._walk(sub, data, start, pos, counts, depth + 1)
            elif sub is not None and wire_type == 2:
                if sub.full_name == STRUCT:
                    if pos - start > self._counter.limits.max_template_kwargs_bytes:
                        self._counter._check_struct(fd, _Sized(pos - start))
                else:
                    self._walk(sub, data, start, pos, counts, depth + 1)


@dataclass(frozen=True)
class _Sized:
    size: int

    def ByteSize(self) -> int:  # noqa: N802 (protobuf's name)
        return self.size


def repeated_fields(root: str) -> set[str]:
    """Every repeated field reachable from the message ``root`` (full name), Struct's
    internals excepted: what ``field_limits`` must cover."""
    from nanovl.v1 import inference_pb2

    pool = inference_pb2.DESCRIPTOR.pool
    seen: set[str] = set()
    found: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name == STRUCT:
            return
        seen.add(name)
        for fd in pool.FindMessageTypeByName(name).fields:
            if fd.is_repeated:
                found.add(fd.full_name)
            if fd.message_type is not None and not fd.message_type.GetOptions().map_entry:
                visit(fd.message_type.full_name)

    visit(root)
    return found


def repeated_string_fields(root: str) -> set[str]:
    """Every repeated ``string`` / ``bytes`` field reachable from ``root``: what
    ``STRING_LIST_FIELDS`` must cover."""
    from nanovl.v1 import inference_pb2

    pool = inference_pb2.DESCRIPTOR.pool
    return {
        name
        for name in repeated_fields(root)
        if pool.FindFieldByName(name).type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)
    }


__all__ = [
    "MAX_TOOLS",
    "MAX_UNCOUNTED_FIELDS",
    "MAX_WIRE_DEPTH",
    "STRING_LIST_FIELDS",
    "RequestCounter",
    "RequestLimits",
    "WireCounter",
    "bytes_limits",
    "field_limits",
    "repeated_fields",
    "repeated_string_fields",
]
