"""``nanovl generate``: send one prompt to a server and stream the answer.

Imports only the client (grpc, protobuf, numpy) and rich: no torch, transformers or vLLM,
so the first RPC goes out a fraction of a second after the command starts.
"""

from __future__ import annotations

import argparse
import sys

from nanovl.cli.common import (
    EXIT_FAILED,
    add_connection_args,
    connection_from_args,
    default_target,
    escape_nonprintable,
    readable_file,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="send one prompt to a server and stream the answer")
    p.add_argument("prompt", help="the text of the prompt (placed after the media)")
    p.add_argument("--target", default=default_target(), help="server address (env NANOVL_TARGET)")
    # Checked by the parser, so a missing file is reported at once, before connecting.
    p.add_argument("--image", action="append", default=[], type=readable_file, metavar="FILE")
    p.add_argument("--video", action="append", default=[], type=readable_file, metavar="FILE")
    p.add_argument("--audio", action="append", default=[], type=readable_file, metavar="FILE")
    p.add_argument("--num-frames", type=int, help="frames to sample from each video")
    p.add_argument("--fps", type=float, help="sample each video at this many frames per second")
    p.add_argument("--max-frames", type=int, help="cap on frames sampled from each video")
    p.add_argument(
        "--verbose", action="store_true", help="print what the model received for each media part (to stderr)"
    )
    p.add_argument("--chunked", action="store_true", help="upload media in chunks with StreamGenerate")
    p.add_argument("--chunk-size", type=int, default=1 << 20, help="bytes per StreamGenerate chunk")
    p.add_argument("--chat", action="store_true", help="send as a user message through the chat template")
    p.add_argument(
        "--audio-in-video",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="give the model each --video's audio track too (default: the server's, see GetModelInfo)",
    )
    r = p.add_argument_group("reasoning and tools (chat; the server must have the parsers, see GetModelInfo)")
    r.add_argument(
        "--thinking",
        choices=("on", "off"),
        help="reason before answering, or not (the chat template's enable_thinking); default: the template's",
    )
    r.add_argument(
        "--thinking-budget", type=int, metavar="N", help="most tokens spent reasoning (thinking_token_budget)"
    )
    r.add_argument(
        "--tools",
        type=readable_file,
        metavar="FILE",
        help="JSON file with a list of OpenAI-style tools the model may call",
    )
    r.add_argument("--tool-choice", metavar="MODE", help="auto (default with tools), none, required, or a tool's name")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--timeout", type=float, default=300)
    add_connection_args(p)
    p.add_argument(
        "--raw",
        action="store_true",
        help="write the generated text exactly as received; by default, on a terminal, control and "
        "non-printable characters are shown as escapes (\\x02)",
    )
    p.set_defaults(func=_generate_main, generate_parser=p)


# Flags that shape each --video part: without a video they would be dropped without a word.
_VIDEO_FLAGS = (
    ("audio_in_video", "--audio-in-video / --no-audio-in-video"),
    ("num_frames", "--num-frames"),
    ("fps", "--fps"),
    ("max_frames", "--max-frames"),
)


def check_video_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A per-video flag without ``--video`` is a usage error (argparse's: exit 2, before
    anything connects), naming the flags."""
    if args.video:
        return
    if given := [flag for dest, flag in _VIDEO_FLAGS if getattr(args, dest) is not None]:
        parser.error(f"{', '.join(given)} apply to --video files; add --video FILE or remove them")


def _generate_main(args: argparse.Namespace) -> int:
    check_video_flags(args.generate_parser, args)
    from rich.console import Console
    from rich.table import Table

    from nanovl.client import (
        ChatTemplate,
        Delta,
        Final,
        InferenceClient,
        InferenceRpcError,
        Message,
        Part,
        Prompt,
        Sampling,
        Started,
        load_tools,
    )

    err = Console(stderr=True)
    escape = not args.raw and sys.stdout.isatty()
    parts = (
        [Part.image(p) for p in args.image]
        + [
            Part.video(
                p,
                num_frames=args.num_frames,
                fps=args.fps,
                max_frames=args.max_frames,
                use_audio_in_video=args.audio_in_video,
            )
            for p in args.video
        ]
        + [Part.audio(p) for p in args.audio]
        + [Part.text(args.prompt)]
    )
    chat = args.chat or args.tools or args.tool_choice or args.thinking or args.thinking_budget is not None
    prompt = (
        Prompt.chat(
            [Message.user(*parts)], tools=load_tools(args.tools) if args.tools else (), tool_choice=args.tool_choice
        )
        if chat
        else Prompt(parts=tuple(parts))
    )
    sampling = Sampling(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        thinking_token_budget=args.thinking_budget,
    )
    template = ChatTemplate(enable_thinking=args.thinking == "on") if args.thinking else None
    final = None
    tls, token = connection_from_args(args)
    wrote = False
    with InferenceClient(args.target, timeout=args.timeout, tls=tls, token=token) as client:
        try:
            call = (
                client.stream_generate(prompt, sampling=sampling, chunk_size=args.chunk_size, chat_template=template)
                if args.chunked
                else client.generate(prompt, sampling=sampling, chat_template=template)
            )
            with call:
                for event in call:
                    if isinstance(event, Started) and args.verbose:
                        for item in event.media:
                            err.print(f"[dim]part {item.part_index}: {item.describe()}[/dim]", highlight=False)
                    if isinstance(event, Delta):
                        if event.reasoning_text:  # the reasoning, apart from the answer: dimmed, on stderr
                            err.print(escape_nonprintable(event.reasoning_text), end="", style="dim", markup=False)
                        sys.stdout.write(escape_nonprintable(event.text) if escape else event.text)
                        for call_ in event.tool_calls:
                            sys.stdout.write(f"\n[tool call {call_.id}] {call_.name}({call_.arguments})\n")
                        wrote = wrote or bool(event.text or event.tool_calls)
                        sys.stdout.flush()
                    elif isinstance(event, Final):
                        final = event
        except InferenceRpcError as exc:
            # str(exc) is "CODE: details": the status once.
            if wrote:  # end the partial answer's line first
                sys.stdout.write("\n")
                sys.stdout.flush()
            print(f"nanovl generate: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
    sys.stdout.write("\n")
    if final is not None:
        u, t = final.usage, final.timings
        table = Table(title=f"request {final.request_id} — {final.finish_reason.name.lower()}", show_header=False)
        by = u.prompt_tokens_by_modality
        table.add_row(
            "prompt tokens", f"{u.prompt_tokens} (text {by.text}, image {by.image}, video {by.video}, audio {by.audio})"
        )
        table.add_row(
            "completion tokens",
            f"{u.completion_tokens} ({u.reasoning_tokens} reasoning)"
            if u.reasoning_tokens
            else str(u.completion_tokens),
        )
        # In the order they happen (README "Timings" explains each).
        names = ("upload_s", "decode_media_s", "preprocess_s", "queue_s", "prefill_s", "ttft_s", "decode_s", "total_s")
        for name in names:
            table.add_row(name.replace("_s", "").replace("_", " "), f"{getattr(t, name) * 1000:.1f} ms")
        if u.completion_tokens > 1 and t.decode_s > 0:
            table.add_row("decode speed", f"{(u.completion_tokens - 1) / t.decode_s:.1f} tokens/s")
        err.print(table)
    return 0
