"""``SamplingOptions`` (proto) → vLLM ``SamplingParams``; unset fields keep vLLM's defaults."""

from __future__ import annotations

import math
from typing import Any

from nanovl.errors import InvalidArgument
from nanovl.sampling_fields import SAMPLING_SCALARS
from nanovl.v1 import inference_pb2 as pb


def structured_outputs_of(opts: pb.SamplingOptions) -> Any:
    """The request's own output constraint as vLLM's ``StructuredOutputsParams`` (None: none).
    A ``structured_output`` without a constraint (empty, or only its shaping options) is
    ``InvalidArgument``."""
    if not opts.HasField("structured_output"):
        return None
    try:
        return _structured(opts.structured_output)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"invalid sampling.structured_output: {exc}") from exc


def _structured(so: pb.StructuredOutput) -> Any:
    from vllm.sampling_params import StructuredOutputsParams

    kind = so.WhichOneof("constraint")
    if kind is None:
        if options := [
            name
            for name, present in (
                ("disable_any_whitespace", so.disable_any_whitespace),
                ("disable_additional_properties", so.disable_additional_properties),
                ("whitespace_pattern", so.HasField("whitespace_pattern")),
            )
            if present
        ]:
            # They shape a constraint's JSON; alone they would be dropped without a word.
            raise InvalidArgument(
                f"sampling.structured_output sets {', '.join(options)} but no constraint: set one of "
                "json_schema, regex, choice, grammar or json_object, or leave structured_output unset"
            )
        # proto: exactly one constraint; an empty message is a client that meant one.
        raise InvalidArgument(
            "sampling.structured_output is set but holds no constraint: set exactly one of json_schema, "
            "regex, choice, grammar or json_object, or leave structured_output unset"
        )
    kwargs: dict[str, Any] = {
        "disable_any_whitespace": so.disable_any_whitespace,
        "disable_additional_properties": so.disable_additional_properties,
    }
    if so.HasField("whitespace_pattern"):
        kwargs["whitespace_pattern"] = so.whitespace_pattern
    value = getattr(so, kind)
    if kind == "choice" and not value.choices:
        # vLLM refuses it only in the engine's input processor (SamplingParams
        # ._validate_structured_outputs), after xgrammar's checker was handed a choice its
        # validation leaves unconverted (it logs "Validation should have already occurred").
        raise InvalidArgument("sampling.structured_output.choice must hold at least one string")
    kwargs["json" if kind == "json_schema" else kind] = list(value.choices) if kind == "choice" else value
    return StructuredOutputsParams(**kwargs)


_FLOATS = tuple(f.name for f in pb.SamplingOptions.DESCRIPTOR.fields if f.type in (f.TYPE_DOUBLE, f.TYPE_FLOAT))


# vLLM's sampler holds these values in float32 tensors (``SamplingMetadata``): a double
# beyond float32's range becomes infinity there, and a nonzero one below its smallest
# normal number becomes 0 or a denormal (5e-324 is 0.0, which vLLM refuses for
# repetition_penalty when sent as 0). Both are refused by name (numpy.finfo(float32)).
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_SMALLEST_NORMAL = 1.1754943508222875e-38
_FLOAT32_RANGE = f"0 or a magnitude in [{FLOAT32_SMALLEST_NORMAL:.4g}, {FLOAT32_MAX:.4g}] (float32)"


def _float32_problem(value: float) -> str | None:
    if not math.isfinite(value):
        return "NaN or infinity"
    if abs(value) > FLOAT32_MAX:
        return "beyond float32's range"
    if value != 0 and abs(value) < FLOAT32_SMALLEST_NORMAL:
        return "below float32's smallest normal number"
    return None


def _check_finite(opts: pb.SamplingOptions) -> None:
    """NaN and infinity pass most of vLLM's range checks (every comparison with NaN is
    false) and then poison the sampler; values outside float32's finite range turn into
    infinity or 0 in vLLM's float32 tensors. Refuse them by name."""
    for name in _FLOATS:
        if opts.HasField(name) and (problem := _float32_problem(value := getattr(opts, name))):
            raise InvalidArgument(
                f"sampling.{name} must be a finite number, {_FLOAT32_RANGE}; got {value!r} ({problem})"
            )
    if bad := [i for i, v in opts.logit_bias.items() if _float32_problem(v)]:
        raise InvalidArgument(
            f"sampling.logit_bias must map token ids to finite numbers ({_FLOAT32_RANGE}); "
            f"ids {sorted(bad)[:5]} have NaN, infinity or a value float32 cannot hold"
        )


_FROM_OPTIONS: Any = object()


def to_sampling_params(
    opts: pb.SamplingOptions, *, default_max_tokens: int, vocab_size: int, structured_outputs: Any = _FROM_OPTIONS
) -> Any:
    """``SamplingParams`` for the options. ``structured_outputs``, when given, replaces the
    options' own constraint (the tool-call grammar vLLM's parser derived, see
    ``service.output_parsing``)."""
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import RequestOutputKind

    _check_finite(opts)
    kwargs: dict[str, Any] = {name: getattr(opts, name) for name in SAMPLING_SCALARS if opts.HasField(name)}
    kwargs.setdefault("max_tokens", default_max_tokens)
    if kwargs["max_tokens"] == 0:
        raise InvalidArgument("sampling.max_tokens must be at least 1")
    if opts.stop:
        kwargs["stop"] = list(opts.stop)
    if opts.bad_words:
        kwargs["bad_words"] = list(opts.bad_words)
    for field_name in ("stop_token_ids", "allowed_token_ids"):
        ids = list(getattr(opts, field_name))
        if bad := [i for i in ids if i >= vocab_size]:
            raise InvalidArgument(f"sampling.{field_name} has ids {bad[:5]} outside the vocabulary (size {vocab_size})")
        if ids:
            kwargs[field_name] = ids
    if opts.logit_bias:
        if bad := [i for i in opts.logit_bias if i >= vocab_size]:
            raise InvalidArgument(f"sampling.logit_bias has ids {bad[:5]} outside the vocabulary (size {vocab_size})")
        kwargs["logit_bias"] = dict(opts.logit_bias)
    if structured_outputs is _FROM_OPTIONS:
        structured_outputs = structured_outputs_of(opts)
    if structured_outputs is not None:
        kwargs["structured_outputs"] = structured_outputs
    try:
        return SamplingParams(output_kind=RequestOutputKind.DELTA, **kwargs)
    except (
        ValueError,
        TypeError,
        VLLMValidationError,
    ) as exc:  # vLLM's own range checks, e.g. "top_p must be in (0, 1]"
        raise InvalidArgument(f"invalid sampling options: {exc}") from exc
