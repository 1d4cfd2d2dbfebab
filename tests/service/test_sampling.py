"""Sampling options → vLLM SamplingParams: non-finite floats are refused by name."""

from __future__ import annotations

import math

import pytest

from nanovl.errors import InvalidArgument
from nanovl.v1 import inference_pb2 as pb
from service.sampling import _FLOATS, to_sampling_params

NON_FINITE = [math.nan, math.inf, -math.inf]


def test_every_float_field_is_checked():
    floats = {f.name for f in pb.SamplingOptions.DESCRIPTOR.fields if f.cpp_type == f.CPPTYPE_DOUBLE}
    assert set(_FLOATS) == floats and len(floats) >= 6


@pytest.mark.parametrize("value", NON_FINITE, ids=str)
@pytest.mark.parametrize("name", _FLOATS)
def test_non_finite_float_is_invalid_argument_naming_the_field(name, value):
    with pytest.raises(InvalidArgument, match=f"sampling.{name} must be a finite number"):
        to_sampling_params(pb.SamplingOptions(**{name: value}), default_max_tokens=4, vocab_size=100)


@pytest.mark.parametrize("value", NON_FINITE, ids=str)
def test_non_finite_logit_bias_is_invalid_argument(value):
    with pytest.raises(InvalidArgument, match=r"sampling.logit_bias .* ids \[7\]"):
        to_sampling_params(pb.SamplingOptions(logit_bias={3: 1.0, 7: value}), default_max_tokens=4, vocab_size=100)


def test_finite_values_pass():
    params = to_sampling_params(
        pb.SamplingOptions(temperature=0.5, top_p=0.9, logit_bias={3: -100.0}), default_max_tokens=4, vocab_size=100
    )
    assert params.temperature == 0.5 and params.logit_bias == {3: -100.0}
