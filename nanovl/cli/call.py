"""``nanovl call``: call any RPC of a server by hand, JSON in and JSON out.

The method and its message types come from the server's reflection service (v1, or
v1alpha for older servers), so it needs no .proto files and works against any gRPC server
that serves reflection, as ``grpcurl`` does::

    nanovl call list                                   # services and their methods
    nanovl call Inference/GetModelInfo                 # request {} by default
    nanovl call grpc.health.v1.Health/Check '{"service": "nanovl.v1.Inference"}'
    echo '{"parts": [{"text": "hi"}], "sampling": {"max_tokens": 8}}' | nanovl call Inference/Generate -

Server-streaming methods print one JSON object per response message. Client-streaming
methods take several request messages: a JSON array, or several objects one after
another (``-`` reads them from stdin). ``bytes`` fields are base64, as in any protobuf
JSON. Imports only grpc and protobuf.
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from collections.abc import Iterator
from typing import Any

from nanovl.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_connection_args,
    connection_from_args,
    default_target,
)

HELP = "call any RPC by hand through server reflection, JSON in and out (no grpcurl needed)"

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"


class CallError(Exception):
    """A failure printed as one line; ``exit_code`` says whose fault it was."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "call",
        help=HELP,
        description="Call any RPC of a gRPC server by hand. Methods and message types come from the server's "
        "reflection (v1, or v1alpha for older servers): no .proto files needed. Requests and responses are "
        "protobuf JSON; a server-streaming method prints one JSON object per message.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  nanovl call list\n"
        "  nanovl call Inference/GetModelInfo\n"
        '  nanovl call Inference/Generate \'{"parts": [{"text": "hello"}], "sampling": {"max_tokens": 8}}\'\n'
        '  nanovl call grpc.health.v1.Health/Check \'{"service": "nanovl.v1.Inference"}\'\n'
        "  nanovl call describe nanovl.v1.GenerateRequest\n\n"
        "exit codes: 0 success; 1 the RPC failed (its status is printed); 2 bad arguments or JSON,\n"
        "unknown method, or no reflection on the server",
    )
    p.add_argument(
        "method",
        metavar="METHOD",
        help="Service/Method (the service by its full name or its last part, e.g. Inference/GetModelInfo), "
        "or `list [SERVICE]`, or `describe SYMBOL`",
    )
    p.add_argument(
        "data",
        nargs="?",
        default=None,
        metavar="JSON",
        help="the request as JSON (default {}); '-' reads stdin; '@FILE' reads a file. For a client-streaming "
        "method: a JSON array or several objects in a row",
    )
    p.add_argument("--target", default=default_target(), help="server address (env NANOVL_TARGET)")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline of the call in seconds")
    p.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="KEY:VALUE",
        help="request metadata (repeatable)",
    )
    p.add_argument("--compact", action="store_true", help="one line of JSON per message")
    add_connection_args(p)
    p.add_argument(
        "--emit-defaults", action="store_true", help="also print fields that hold their default value (0, '', false)"
    )
    p.set_defaults(func=_main)


# ------------------------------------------------------------------ local parsing


def parse_json_messages(text: str) -> list[dict[str, Any]]:
    """One or more JSON objects: a single object, an array of objects, or objects written
    one after another (whitespace or newlines between)."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos].isspace():
            pos += 1
        if pos >= end:
            break
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise CallError(f"the request is not valid JSON: {exc}") from None
        values.append(value)
    if len(values) == 1 and isinstance(values[0], list):
        values = values[0]
    if not values:
        values = [{}]
    for i, v in enumerate(values):
        if not isinstance(v, dict):
            raise CallError(f"request message {i} is {type(v).__name__}, not a JSON object")
    return values


def parse_method(text: str) -> tuple[str, str]:
    """``pkg.Service/Method``, ``Service/Method`` or ``pkg.Service.Method`` → (service, method)."""
    if "/" in text:
        service, _, method = text.strip("/").rpartition("/")
    else:
        service, _, method = text.rpartition(".")
    if not service or not method:
        raise CallError(f"{text!r} is not a method: write Service/Method, e.g. Inference/GetModelInfo")
    return service, method


def parse_headers(headers: list[str]) -> list[tuple[str, str]]:
    out = []
    for h in headers:
        key, sep, value = h.partition(":")
        if not sep or not key.strip():
            raise CallError(f"--header {h!r}: write KEY:VALUE")
        out.append((key.strip().lower(), value.strip()))
    return out


def _read_data(data: str | None) -> str:
    if data is None:
        return "{}"
    if data == "-":
        return sys.stdin.read()
    if data.startswith("@"):
        try:
            with open(data[1:], encoding="utf-8") as f:
                return f.read()
        except OSError as exc:
            raise CallError(f"cannot read {data[1:]}: {exc.strerror or exc}") from None
    return data


# ------------------------------------------------------------------ reflection


class _ReflectionStub:
    """The reflection stream over one method path: v1 and v1alpha messages are identical
    on the wire, so grpcio-reflection's v1alpha types serve both."""

    def __init__(self, channel: Any, service: str, metadata: list[tuple[str, str]], timeout: float) -> None:
        from grpc_reflection.v1alpha import reflection_pb2 as rpb

        self.service = service
        self._call = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=rpb.ServerReflectionRequest.SerializeToString,
            response_deserializer=rpb.ServerReflectionResponse.FromString,
        )
        self._metadata = metadata or None
        self._timeout = timeout

    def ServerReflectionInfo(self, requests: Iterator[Any]) -> Iterator[Any]:  # noqa: N802 (the stub's name)
        return self._call(requests, metadata=self._metadata, timeout=self._timeout)


def _descriptor_database(channel: Any, metadata: list[tuple[str, str]], timeout: float) -> Any:
    """grpcio-reflection's descriptor database over reflection v1, falling back to
    v1alpha when the server does not serve v1."""
    import grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    last: grpc.RpcError | None = None
    for service in (REFLECTION_V1, REFLECTION_V1ALPHA):
        db = ProtoReflectionDescriptorDatabase(channel)
        db._stub = _ReflectionStub(channel, service, metadata, timeout)  # the one seam it offers
        try:
            db.services = list(db.get_services())  # probe (and keep the answer)
        except grpc.RpcError as exc:
            last = exc
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                continue
            raise
        return db
    raise CallError(
        "the server does not serve gRPC reflection (grpc.reflection.v1 or v1alpha); "
        f"{last.details() if last else ''}".rstrip("; ")
    )


def _resolve_service(services: list[str], name: str) -> str:
    if name in services:
        return name
    matches = [s for s in services if s.rsplit(".", 1)[-1] == name or s.endswith("." + name)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise CallError(f"the server has no service {name!r}; it serves: {', '.join(sorted(services))}")
    raise CallError(f"{name!r} is ambiguous: {', '.join(sorted(matches))}; use the full name")


def _describe_method(m: Any) -> str:
    req = f"stream {m.input_type.full_name}" if m.client_streaming else m.input_type.full_name
    resp = f"stream {m.output_type.full_name}" if m.server_streaming else m.output_type.full_name
    return f"{m.name}({req}) returns ({resp})"


def _list(pool: Any, services: list[str], only: str | None) -> list[str]:
    lines = []
    for name in sorted(services) if only is None else [_resolve_service(services, only)]:
        lines.append(name)
        try:
            desc = pool.FindServiceByName(name)
        except KeyError:
            lines.append("  (no descriptor served)")
            continue
        lines.extend(f"  {_describe_method(m)}" for m in desc.methods)
    return lines


def _describe(pool: Any, services: list[str], symbol: str) -> str:
    from google.protobuf import descriptor_pb2

    for finder, proto_cls in (
        (pool.FindMessageTypeByName, descriptor_pb2.DescriptorProto),
        (pool.FindServiceByName, descriptor_pb2.ServiceDescriptorProto),
        (pool.FindEnumTypeByName, descriptor_pb2.EnumDescriptorProto),
    ):
        try:
            desc = finder(symbol)
        except KeyError:
            continue
        msg = proto_cls()
        desc.CopyToProto(msg)
        return f"{desc.full_name}:\n{msg}"
    if "/" in symbol or symbol.count(".") >= 1:
        try:
            service, method = parse_method(symbol)
            m = pool.FindServiceByName(_resolve_service(services, service)).methods_by_name[method]
            return f"{m.full_name}: {_describe_method(m)}"
        except (CallError, KeyError):
            pass
    raise CallError(f"the server's descriptors have no symbol {symbol!r} (a message, enum, service or method)")


# ------------------------------------------------------------------ the call


def terminal_safe_json(value: Any, *, indent: int | None) -> str:
    """JSON whose strings carry no character that could drive a terminal: json.dumps
    escapes only C0 controls, so DEL, C1 controls, format and separator characters (a
    model's output can hold any of them) are escaped here too, still as valid JSON."""
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    out = []
    for ch in text:
        if ch != "\n" and (unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp")):
            code = ord(ch)
            if code > 0xFFFF:  # JSON escapes are UTF-16: a surrogate pair
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
            else:
                out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _print_message(message: Any, args: argparse.Namespace) -> None:
    from google.protobuf import json_format

    as_dict = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=args.emit_defaults
    )
    print(terminal_safe_json(as_dict, indent=None if args.compact else 2), flush=True)


def _invoke(channel: Any, pool: Any, services: list[str], args: argparse.Namespace, metadata: Any) -> int:
    import grpc
    from google.protobuf import json_format, message_factory

    service_name, method_name = parse_method(args.method)
    service = pool.FindServiceByName(_resolve_service(services, service_name))
    method = service.methods_by_name.get(method_name)
    if method is None:
        raise CallError(
            f"{service.full_name} has no method {method_name!r}; it has: {', '.join(m.name for m in service.methods)}"
        )
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    requests = []
    for i, value in enumerate(args.messages):
        try:
            requests.append(json_format.ParseDict(value, request_cls()))
        except json_format.ParseError as exc:
            where = f"request message {i}" if len(args.messages) > 1 else "the request"
            raise CallError(f"{where} does not fit {method.input_type.full_name}: {exc}") from None
    if not method.client_streaming and len(requests) != 1:
        raise CallError(f"{method.full_name} takes one request message, got {len(requests)}")

    path = f"/{service.full_name}/{method.name}"
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    rpc = kind(path, request_serializer=request_cls.SerializeToString, response_deserializer=response_cls.FromString)
    payload = iter(requests) if method.client_streaming else requests[0]
    try:
        if method.server_streaming:
            for response in rpc(payload, timeout=args.timeout, metadata=metadata):
                _print_message(response, args)
        else:
            _print_message(rpc(payload, timeout=args.timeout, metadata=metadata), args)
    except grpc.RpcError as exc:
        raise CallError(_status(exc), EXIT_FAILED) from None
    return EXIT_OK


def _status(exc: Any) -> str:
    """``CODE: details``, or just ``CODE`` when the server sent no details."""
    details = exc.details() if hasattr(exc, "details") else None
    return f"{exc.code().name}: {details}" if details else exc.code().name


def _main(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except CallError as exc:
        print(f"nanovl call: error: {exc}", file=sys.stderr)
        return exc.exit_code


def _run(args: argparse.Namespace) -> int:
    # Everything that can be checked here is checked before connecting.
    metadata = parse_headers(args.header) or None
    action = args.method
    if action in ("list", "describe"):
        if action == "describe" and not args.data:
            raise CallError("describe needs a symbol, e.g. `nanovl call describe nanovl.v1.GenerateRequest`")
    else:
        parse_method(action)
        args.messages = parse_json_messages(_read_data(args.data))

    import grpc
    from google.protobuf import descriptor_pool

    from nanovl.client.security import channel_settings

    tls, token = connection_from_args(args)
    credentials, auth_metadata, options = channel_settings(None, tls, token, metadata or (), [])
    metadata = list(auth_metadata) or None
    if credentials is None:
        channel_cm = grpc.insecure_channel(args.target, options=options)
    else:
        channel_cm = grpc.secure_channel(args.target, credentials, options=options)
    with channel_cm as channel:
        try:
            db = _descriptor_database(channel, metadata or [], args.timeout)
        except grpc.RpcError as exc:
            raise CallError(f"cannot read the services of {args.target}: {_status(exc)}", EXIT_FAILED) from None
        pool = descriptor_pool.DescriptorPool(db)
        try:
            if action == "list":
                print("\n".join(_list(pool, db.services, args.data)))
                return EXIT_OK
            if action == "describe":
                print(_describe(pool, db.services, args.data))
                return EXIT_OK
            return _invoke(channel, pool, db.services, args, metadata)
        except KeyError as exc:
            raise CallError(f"the server's reflection has no descriptor for {exc}") from None
        except grpc.RpcError as exc:  # reflection failed mid-way
            raise CallError(_status(exc), EXIT_FAILED) from None
