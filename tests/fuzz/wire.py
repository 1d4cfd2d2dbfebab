"""Hand-encoded protobuf wire bytes: requests no well-behaved client library would send."""

from __future__ import annotations

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def field_len(field: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, sub-message)."""
    return tag(field, LEN) + varint(len(payload)) + payload


def field_varint(field: int, n: int) -> bytes:
    return tag(field, VARINT) + varint(n)


def nested_struct(depth: int) -> bytes:
    """A ``google.protobuf.Struct`` nested ``depth`` deep: {"k": {"k": ... {}}}.

    Struct.fields (1) is a map<string, Value>: an entry with key (1) and value (2); a
    Value holding a Struct uses struct_value (5)."""
    body = b""
    for _ in range(depth):
        value = field_len(5, body)  # Value.struct_value
        entry = field_len(1, b"k") + field_len(2, value)
        body = field_len(1, entry)  # Struct.fields entry
    return body


def generate_request_with_kwargs(struct: bytes) -> bytes:
    """A GenerateRequest whose chat_template (4).chat_template_kwargs (2) is ``struct``."""
    return field_len(4, field_len(2, struct))


def invalid_utf8_text_part() -> bytes:
    """GenerateRequest.parts (2) with ContentPart.text (1) = b"\\xff\\xfe" (not UTF-8)."""
    return field_len(2, field_len(1, b"ok \xff\xfe"))


def invalid_utf8_request_id() -> bytes:
    return field_len(1, b"\xc3\x28")


def truncated(message: bytes, keep: int) -> bytes:
    return message[: max(0, min(keep, len(message) - 1))]


# Bytes that are not a protobuf message of any type.
UNDECODABLE = {
    "lone tag": b"\x0a",  # field 1, LEN, then nothing
    "length past end": b"\x0a\x10abc",
    "bad wire type 7": b"\x0f\x00",
    "bad wire type 6": b"\x0e\x00",
    "end group without start": b"\x0c",
    "field number 0": b"\x02\x00",
    "unterminated varint": b"\x08\xff\xff\xff",
    "overlong varint": b"\x08" + b"\xff" * 10 + b"\x01",
}
