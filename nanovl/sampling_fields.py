"""The ``SamplingOptions`` fields that map one to one onto ``vllm.SamplingParams``, named
once for the client (which copies them into the message) and the server (which copies
them into ``SamplingParams``)."""

from __future__ import annotations

# Optional scalars: copied only when set, so an unset field keeps vLLM's default.
SAMPLING_SCALARS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_tokens",
    "min_tokens",
    "seed",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "ignore_eos",
    "logprobs",
    "prompt_logprobs",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "include_stop_str_in_output",
    "detokenize",
    "thinking_token_budget",
)
SAMPLING_LISTS = ("stop", "stop_token_ids", "allowed_token_ids", "bad_words")
