"""The tiny checkpoint builder and the config validation."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from model.checkpoint import CheckpointError, validate_checkpoint
from model.tiny import VARIANTS, build_tiny_checkpoint, ensure_tiny_checkpoint


def _digest(path):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


def test_builder_is_deterministic(tmp_path):
    a = build_tiny_checkpoint(tmp_path / "a", "full", seed=7)
    b = build_tiny_checkpoint(tmp_path / "b", "full", seed=7)
    c = build_tiny_checkpoint(tmp_path / "c", "full", seed=8)
    assert _digest(a) == _digest(b)
    assert _digest(a)["model.safetensors"] != _digest(c)["model.safetensors"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_validates(tmp_path, variant):
    path = build_tiny_checkpoint(tmp_path / variant, variant)
    info = validate_checkpoint(path)
    assert info.has_audio == (variant not in ("no-audio", "omni-v3-no-audio"))
    assert info.dynamic_resolution == (variant in ("dynamic", "omni-v3", "omni-v3-no-audio"))


@pytest.mark.parametrize(
    "field",
    [
        "force_image_size",
        "text_config.hidden_size",
        "vision_config.args.model",
        "sound_config.sampling_rate",
        "sound_config",
    ],
)
def test_missing_required_field_is_named(tmp_path, field):
    path = build_tiny_checkpoint(tmp_path / "ck", "full")
    cfg = json.loads((path / "config.json").read_text())
    node = cfg
    *parents, leaf = field.split(".")
    for key in parents:
        node = node[key]
    del node[leaf]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=field.replace(".", r"\.")):
        validate_checkpoint(path)


def test_forbidden_sound_key_is_named(tmp_path):
    path = build_tiny_checkpoint(tmp_path / "ck", "full")
    cfg = json.loads((path / "config.json").read_text())
    cfg["sound_config"]["scale_input"] = False
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="sound_config.scale_input"):
        validate_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        validate_checkpoint(tmp_path)


# ---------------------------------------------------------------- V3 (Nemotron 3 Omni)


@pytest.mark.parametrize(
    ("variant", "architecture", "has_audio"),
    [("omni-v3", "NemotronH_Nano_Omni_Reasoning_V3", True), ("omni-v3-no-audio", "NemotronH_Omni_Reasoning_V3", False)],
)
def test_v3_variants_validate(variant, architecture, has_audio):
    info = validate_checkpoint(ensure_tiny_checkpoint(variant))
    assert (info.architecture, info.has_audio) == (architecture, has_audio)
    assert info.moe and info.layer_pattern == "MEM*E" and info.num_experts == 8
    assert info.dynamic_resolution and info.video_temporal_patch_size == 2


def test_v2_variants_have_no_moe():
    info = validate_checkpoint(ensure_tiny_checkpoint("full"))
    assert info.architecture == "NemotronH_Nano_VL_V2" and not info.moe and info.num_experts == 0


def _edit_config(tmp_path, variant, edit):
    path = build_tiny_checkpoint(tmp_path / "ck", variant)
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize(
    "field",
    [
        "n_routed_experts",
        "num_experts_per_tok",
        "moe_intermediate_size",
        "n_shared_experts",
        "moe_shared_expert_intermediate_size",
        "routed_scaling_factor",
    ],
)
def test_missing_moe_field_is_named(tmp_path, field):
    path = _edit_config(tmp_path, "omni-v3", lambda cfg: cfg["text_config"].pop(field))
    with pytest.raises(CheckpointError, match=rf"text_config\.{field}\b"):
        validate_checkpoint(path)


def test_moe_fields_are_required_only_with_moe_blocks(tmp_path):
    # A V2 (no "E" block) config needs no MoE field; an all-MoE V3 one needs no intermediate_size.
    validate_checkpoint(
        _edit_config(tmp_path / "v2", "full", lambda cfg: cfg["text_config"].pop("n_routed_experts", 0))
    )
    validate_checkpoint(
        _edit_config(tmp_path / "v3", "omni-v3", lambda cfg: cfg["text_config"].pop("intermediate_size"))
    )
    path = _edit_config(tmp_path / "v2b", "full", lambda cfg: cfg["text_config"].pop("intermediate_size"))
    with pytest.raises(CheckpointError, match=r"text_config\.intermediate_size"):
        validate_checkpoint(path)


def test_layers_block_type_is_read_like_the_pattern(tmp_path):
    def to_block_types(cfg):
        pattern = cfg["text_config"].pop("hybrid_override_pattern")
        names = {"M": "mamba", "E": "moe", "*": "attention", "-": "mlp"}
        cfg["text_config"]["layers_block_type"] = [names[c] for c in pattern]

    info = validate_checkpoint(_edit_config(tmp_path, "omni-v3", to_block_types))
    assert info.layer_pattern == "MEM*E"


def test_more_experts_per_token_than_experts_is_named(tmp_path):
    path = _edit_config(tmp_path, "omni-v3", lambda cfg: cfg["text_config"].update(num_experts_per_tok=9))
    with pytest.raises(CheckpointError, match="num_experts_per_tok"):
        validate_checkpoint(path)


def test_unknown_architecture_is_named(tmp_path):
    path = _edit_config(tmp_path, "omni-v3", lambda cfg: cfg.update(architectures=["SomethingElse"]))
    with pytest.raises(CheckpointError, match="NemotronH_Nano_Omni_Reasoning_V3"):
        validate_checkpoint(path)


def test_v3_experts_are_stored_per_expert_like_hugging_face_checkpoints():
    from safetensors import safe_open

    path = ensure_tiny_checkpoint("omni-v3")
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        bias = f.get_tensor("language_model.backbone.layers.1.mixer.gate.e_score_correction_bias")
    block = "language_model.backbone.layers.1.mixer."
    for i in range(8):
        assert {f"{block}experts.{i}.up_proj.weight", f"{block}experts.{i}.down_proj.weight"} <= names
    assert {f"{block}gate.weight", f"{block}shared_experts.up_proj.weight"} <= names
    assert not any(n.endswith(("experts.up_proj", "experts.down_proj")) for n in names)
    assert bias.dtype == torch.float32 and bias.unique().numel() == 8  # distinct per expert


# The chat template and tokenizer: what vLLM's nemotron_v3 reasoning parser and
# qwen3_coder tool parser read back.

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.fixture(scope="module")
def v3_tokenizer():
    from vllm.tokenizers import get_tokenizer

    return get_tokenizer(str(ensure_tiny_checkpoint("omni-v3")), trust_remote_code=True)


def test_v3_enable_thinking_opens_or_closes_the_think_block(v3_tokenizer):
    messages = [{"role": "user", "content": "hi"}]
    on = v3_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    off = v3_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert on.endswith("<|im_start|>assistant\n<think>\n")
    assert off.endswith("<|im_start|>assistant\n<think></think>")


def test_v3_think_and_tool_tags_are_single_visible_tokens(v3_tokenizer):
    for tag in ("<think>", "</think>", "<tool_call>", "</tool_call>"):
        ids = v3_tokenizer.encode(tag, add_special_tokens=False)
        assert len(ids) == 1 and v3_tokenizer.decode(ids, skip_special_tokens=True) == tag


def test_v3_tool_call_round_trips_through_vllms_parsers(v3_tokenizer):
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.parser.nemotron_v3 import NemotronV3Parser
    from vllm.tool_parsers import ToolParserManager

    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Weather there?"}]},
        {"role": "assistant", "content": "", "reasoning_content": "Need the tool.", "tool_calls": [call]},
        {"role": "tool", "content": "sunny"},
    ]
    rendered = v3_tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert "<tools>\n<function>\n<name>get_weather</name>" in rendered
    assert "<|im_start|>user\n<image>Weather there?<|im_end|>" in rendered
    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<|im_end|>" in rendered
    assert rendered.endswith("<|im_start|>assistant\n<think>\n")
    # The assistant turn the template wrote, after the "<think>\n" a generation prompt
    # ends with, is what the model would have produced: parse it back.
    turn = rendered.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert turn.startswith("<think>\n")
    output = turn.removeprefix("<think>\n")
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], tools=TOOLS)
    reasoning, _ = NemotronV3Parser(v3_tokenizer, request.tools).extract_reasoning(output, request)
    assert reasoning == "Need the tool."
    for parser in (NemotronV3Parser(v3_tokenizer, request.tools), ToolParserManager.get_tool_parser("qwen3_coder")):
        if isinstance(parser, type):
            parser = parser(v3_tokenizer, request.tools)
        info = parser.extract_tool_calls(output, request)
        assert info.tools_called
        assert [(c.function.name, json.loads(c.function.arguments)) for c in info.tool_calls] == [
            ("get_weather", {"city": "Paris", "days": 2})
        ]


def test_v3_without_thinking_is_all_content(v3_tokenizer):
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.parser.nemotron_v3 import NemotronV3Parser

    kwargs = {"enable_thinking": False}
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], chat_template_kwargs=kwargs)
    parser = NemotronV3Parser(v3_tokenizer, None, chat_template_kwargs=kwargs)
    assert parser.extract_reasoning("Just the answer.", request) == (None, "Just the answer.")
