"""Deterministic builder for tiny, randomly initialised ``NemotronH_Nano_VL_V2`` checkpoints.

No weights can be downloaded on CI machines, so nanovl builds its own checkpoint of the
real architecture (hybrid Mamba2/attention LLM, RADIO tower, Parakeet encoder, the
real processor and chat conventions) at a few million parameters. Outputs are noise;
every code path that serves them is the real one.

Same ``(variant, seed, BUILDER_VERSION)`` → byte-identical files: tensors are drawn from
a generator seeded by ``(seed, tensor name)``, so they do not depend on module
construction order or library init code.

V3 variants (Nemotron 3 Omni)
-----------------------------
``omni-v3`` (architecture ``NemotronH_Nano_Omni_Reasoning_V3``) and ``omni-v3-no-audio``
(``NemotronH_Omni_Reasoning_V3``) are served by the same vLLM class as V2. What they add:
a Mixture-of-Experts LLM (``E`` blocks in the hybrid pattern), video tubelets
(``video_temporal_patch_size`` 2), the dynamic-resolution tiler, a fixed per-frame video
patch budget, a reasoning chat template with tools, and (``omni-v3``) Parakeet audio.

No V3 config file could be read here, so some fields are inferred, each from what vLLM
0.32's code and transformers' ``NemotronHConfig`` read, not from the real files:

- MoE fields are transformers' ``NemotronHConfig`` names, which vLLM's ``NemotronHMoE``
  reads: ``n_routed_experts``, ``num_experts_per_tok``, ``moe_intermediate_size``,
  ``n_shared_experts``, ``moe_shared_expert_intermediate_size``, ``routed_scaling_factor``,
  ``n_group``, ``topk_group``, ``norm_topk_prob``; ``moe_latent_size`` null (LatentMoE is
  the Super model's; the Nano is assumed not to use it). Router: sigmoid scores with an
  ``e_score_correction_bias`` (vLLM hard-codes both), stored in float32, as vLLM
  allocates it. Sizes are tiny; ``routed_scaling_factor`` 2.5 is a guess at the real one.
- Every FFN block is an ``E`` block (no dense ``-`` blocks): the pattern is Mamba, MoE,
  Mamba, attention, MoE (``"MEM*E"``), the shape of the published Nemotron 3 Nano
  patterns. ``intermediate_size`` is still written (transformers has a default) but
  nothing reads it without ``-`` blocks.
- Expert weights are stored per expert (``mixer.experts.{i}.up_proj.weight``,
  ``...down_proj.weight``): the Hugging Face checkpoint layout that vLLM's loader
  (``ckpt_names=("up_proj", "down_proj", None)``) and transformers' conversion mapping
  both expect; transformers' in-memory layout (one ``[E, I, H]`` tensor) is split.
- ``num_nextn_predict_layers`` 0 (no MTP layers, hence no ``vision_final_layernorm``):
  vLLM treats the Super and the no-audio ``NemotronH_Omni_Reasoning_V3`` as MTP
  checkpoints, but the tiny ones carry no draft layers.
- ``model_type`` stays ``NemotronH_Nano_VL_V2`` with the same ``auto_map`` config class
  (vLLM picks the model class by ``architectures``; a real V3 checkpoint ships its own
  configuration file, whose ``model_type`` is unknown here).
- Video: ``video_target_num_patches`` 196 with ``video_maintain_aspect_ratio`` true (the
  processor's fixed per-frame patch budget, aspect kept) instead of V2's square 224
  tiles. EVS has no config field: vLLM reads ``video_pruning_rate`` from the engine
  arguments only, so it stays off unless the engine sets it.
- ``max_position_embeddings`` 8192 (the real models: 262144): the tiny model is served on
  CPU with small contexts, and vLLM sizes dummy video/audio to the whole context.
- Chat template: ChatML turns; ``enable_thinking`` (default true) opens ``<think>\n`` in
  the generation prompt, false closes it at once (``<think></think>``); tools are listed
  in ``<tools>`` and called as ``<tool_call><function=NAME><parameter=K>V</parameter>
  </function></tool_call>``, the format of vLLM's ``nemotron_v3`` reasoning parser and
  ``qwen3_coder`` tool parser. ``<think>``, ``</think>``, ``<tool_call>`` and
  ``</tool_call>`` are single, non-special tokens (they survive detokenization).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from model import config as config_module
from model.checkpoint import V3_ARCHITECTURES
from model.config import MODEL_TYPE
from model.variants import V3_VARIANTS, VARIANTS, Variant

# Bump when the bytes a builder writes change: the cache is keyed by it.
BUILDER_VERSION = 2


CONFIG_MODULE_FILE = "configuration_nanovl.py"

# Token layout: special tokens first, then the 256 byte-level symbols, then reserved
# tokens so the vocabulary is exactly the LLM's (the model can never sample an id the
# tokenizer cannot decode).
SPECIAL_TOKENS = (
    "<unk>",
    "<s>",
    "</s>",
    "<pad>",
    "<|im_start|>",
    "<|im_end|>",
    "<image>",
    "<img>",
    "</img>",
    "<video>",
    "<so_start>",
    "<so_end>",
    "<so_embedding>",
    "<think>",
    "</think>",
)
VOCAB_SIZE = 320

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- elif part['type'] == 'image' -%}{{ '<image>' }}"
    "{%- elif part['type'] == 'video' -%}{{ '<video>' }}"
    "{%- elif part['type'] == 'audio' -%}{{ '<so_embedding>' }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# V3 (Nemotron 3): reasoning with enable_thinking, and tools in the XML call format that
# vLLM's nemotron_v3 / qwen3_coder parsers read. Kept small; see the module docstring.
V3_TOOL_TOKENS = ("<tool_call>", "</tool_call>")
V3_CHAT_TEMPLATE = (
    "{%- macro render_content(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- elif content is not none -%}{%- for part in content -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- elif part['type'] == 'image' -%}{{ '<image>' }}"
    "{%- elif part['type'] == 'video' -%}{{ '<video>' }}"
    "{%- elif part['type'] == 'audio' -%}{{ '<so_embedding>' }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- set thinking = enable_thinking if enable_thinking is defined else true -%}"
    "{%- set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else '' -%}"
    "{%- if system or tools -%}"
    "{{ '<|im_start|>system\\n' }}{{ render_content(system) }}"
    "{%- if tools -%}"
    "{{ ('\\n\\n' if system else '') + '# Tools\\n\\nYou have access to the following functions:\\n\\n<tools>' }}"
    "{%- for tool in tools -%}{%- set fn = tool['function'] if tool['function'] is defined else tool -%}"
    "{{ '\\n<function>\\n<name>' + fn['name'] + '</name>' }}"
    "{%- if fn['description'] is defined -%}"
    "{{ '\\n<description>' + fn['description'] + '</description>' }}{%- endif -%}"
    "{{ '\\n<parameters>' }}"
    "{%- if fn['parameters'] is defined and fn['parameters']['properties'] is defined -%}"
    "{%- for pname, pspec in fn['parameters']['properties'].items() -%}"
    "{{ '\\n<parameter>\\n<name>' + pname + '</name>' }}"
    "{%- if pspec['type'] is defined -%}{{ '\\n<type>' + pspec['type'] | string + '</type>' }}{%- endif -%}"
    "{%- if pspec['description'] is defined -%}"
    "{{ '\\n<description>' + pspec['description'] + '</description>' }}{%- endif -%}"
    "{{ '\\n</parameter>' }}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '\\n</parameters>\\n</function>' }}"
    "{%- endfor -%}"
    "{{ '\\n</tools>\\n\\nIf you choose to call a function ONLY reply in the following format with NO suffix:'"
    " + '\\n\\n<tool_call>\\n<function=example_function_name>\\n<parameter=example_parameter_1>\\nvalue_1'"
    " + '\\n</parameter>\\n</function>\\n</tool_call>' }}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' and loop.first -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- set reasoning = message['reasoning_content'] if message['reasoning_content'] is defined else"
    " (message['reasoning'] if message['reasoning'] is defined else none) -%}"
    "{%- if reasoning -%}{{ '<think>\\n' + reasoning | trim + '\\n</think>\\n' }}"
    "{%- else -%}{{ '<think></think>' }}{%- endif -%}"
    "{{ render_content(message['content']) | trim }}"
    "{%- if message['tool_calls'] is defined and message['tool_calls'] -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}"
    "{{ ('\\n\\n' if message['content'] or not loop.first else '') }}"
    "{{ '<tool_call>\\n<function=' + fn['name'] + '>\\n' }}"
    "{%- if fn['arguments'] is mapping -%}{%- for key, value in fn['arguments'].items() -%}"
    "{{ '<parameter=' + key + '>\\n' + (value if value is string else value | tojson) + '\\n</parameter>\\n' }}"
    "{%- endfor -%}{%- elif fn['arguments'] is defined -%}{{ fn['arguments'] }}{%- endif -%}"
    "{{ '</function>\\n</tool_call>' }}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if loop.first or loop.previtem['role'] != 'tool' -%}{{ '<|im_start|>user\\n' }}{%- endif -%}"
    "{{ '<tool_response>\\n' }}{{ render_content(message['content']) }}{{ '\\n</tool_response>\\n' }}"
    "{%- if loop.last or loop.nextitem['role'] != 'tool' -%}{{ '<|im_end|>\\n' }}{%- endif -%}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}{{ render_content(message['content']) }}{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' + ('<think>\\n' if thinking else '<think></think>') }}"
    "{%- endif -%}"
)


@dataclass(frozen=True)
class TinySpec:
    """What distinguishes the variants."""

    variant: Variant = "full"
    seed: int = 0

    @property
    def is_v3(self) -> bool:
        return self.variant in V3_VARIANTS

    @property
    def architecture(self) -> str:
        if self.variant == "omni-v3":
            return V3_ARCHITECTURES[0]  # NemotronH_Nano_Omni_Reasoning_V3
        if self.variant == "omni-v3-no-audio":
            return V3_ARCHITECTURES[2]  # NemotronH_Omni_Reasoning_V3
        return MODEL_TYPE

    @property
    def has_audio(self) -> bool:
        return self.variant not in ("no-audio", "omni-v3-no-audio")

    @property
    def dynamic_resolution(self) -> bool:
        return self.variant == "dynamic" or self.is_v3

    @property
    def video_temporal_patch_size(self) -> int:
        return 2 if self.dynamic_resolution else 1


# Sizes of the tiny model. Chosen to exercise every block type while keeping the
# whole checkpoint around 7M parameters.
LLM_HIDDEN = 256
VIT_HIDDEN = 384  # vit_small_patch16_224, the smallest RADIO name vLLM knows
PROJECTOR_HIDDEN = 512
VIT_LAYERS = 2
CPE_MAX_SIZE = 512
SOUND_HIDDEN = 64


def _text_config(spec: TinySpec) -> dict:
    ids = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    return {
        "model_type": "nemotron_h",
        "architectures": ["NemotronHForCausalLM"],
        "hybrid_override_pattern": "M-M*-",
        "hidden_size": LLM_HIDDEN,
        "vocab_size": VOCAB_SIZE,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "intermediate_size": 512,
        "mlp_hidden_act": "relu2",
        "mamba_num_heads": 8,
        "mamba_head_dim": 32,
        "n_groups": 2,
        "ssm_state_size": 32,
        "conv_kernel": 4,
        "chunk_size": 128,
        "mamba_ssm_cache_dtype": "float32",
        "max_position_embeddings": 8192,
        "tie_word_embeddings": False,
        "bos_token_id": ids["<s>"],
        "eos_token_id": ids["</s>"],
        "pad_token_id": ids["<pad>"],
        "dtype": "bfloat16",
        **(_moe_fields() if spec.is_v3 else {}),
    }


# The MoE LLM of the V3 variants (see the module docstring for what is inferred).
MOE_EXPERTS = 8
MOE_TOP_K = 2
MOE_INTERMEDIATE = 128
MOE_SHARED_INTERMEDIATE = 256


def _moe_fields() -> dict:
    return {
        "hybrid_override_pattern": "MEM*E",
        "n_routed_experts": MOE_EXPERTS,
        "num_experts_per_tok": MOE_TOP_K,
        "moe_intermediate_size": MOE_INTERMEDIATE,
        "n_shared_experts": 1,
        "moe_shared_expert_intermediate_size": MOE_SHARED_INTERMEDIATE,
        "moe_latent_size": None,
        "routed_scaling_factor": 2.5,
        "n_group": 1,
        "topk_group": 1,
        "norm_topk_prob": True,
        "num_nextn_predict_layers": 0,
    }


def _vision_config(spec: TinySpec) -> dict:
    args: dict = {
        "model": "vit_small_patch16_224",
        "num_hidden_layers": VIT_LAYERS,
        "cpe_max_size": CPE_MAX_SIZE,
        "register_multiple": 8,
        "cls_token_per_teacher": True,
        "teachers": [
            {"name": "teacher_a", "use_summary": True},
            {"name": "teacher_b", "use_summary": True},
        ],
        "qkv_bias": True,
    }
    if spec.dynamic_resolution:
        args["min_num_patches"] = 64
        args["max_num_patches"] = 1024
    config = {
        "model_type": "nemotron_nano_vl_radio",
        "args": args,
        "preferred_resolution": [224, 224],
        "patch_size": 16,
        "video_temporal_patch_size": spec.video_temporal_patch_size,
        "separate_video_embedder": True,
        "video_maintain_aspect_ratio": False,
        "layer_norm_eps": 1e-6,
    }
    if spec.is_v3:
        # A fixed patch budget per video frame, aspect ratio kept (14 x 14 patches at 1:1).
        config["video_target_num_patches"] = 196
        config["video_maintain_aspect_ratio"] = True
    return config


def _sound_config(spec: TinySpec) -> dict | None:
    if not spec.has_audio:
        return None
    return {
        "model_type": "nemotron_nano_vl_parakeet",
        "hidden_size": SOUND_HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "hidden_act": "silu",
        "conv_kernel_size": 9,
        "convolution_bias": True,
        "subsampling_factor": 8,
        "subsampling_conv_channels": 32,
        "subsampling_conv_kernel_size": 3,
        "subsampling_conv_stride": 2,
        "num_mel_bins": 128,
        "sampling_rate": 16000,
        "projection_hidden_size": 128,
        "projection_bias": False,
    }


def checkpoint_config(spec: TinySpec) -> dict:
    """The ``config.json`` contents for a tiny checkpoint."""
    return {
        "architectures": [spec.architecture],
        "model_type": MODEL_TYPE,
        "auto_map": {"AutoConfig": f"{Path(CONFIG_MODULE_FILE).stem}.NemotronNanoVLConfig"},
        "nanovl_tiny": {"variant": spec.variant, "seed": spec.seed, "builder_version": BUILDER_VERSION},
        "force_image_size": 224,
        "patch_size": 16,
        "downsample_ratio": 0.5,
        "use_thumbnail": True,
        "template": "nemotron_h",
        "ps_version": "v2",
        "image_tag_type": "internvl",
        "vit_hidden_size": VIT_HIDDEN,
        "projector_hidden_size": PROJECTOR_HIDDEN,
        "norm_mean": [0.48145466, 0.4578275, 0.40821073],
        "norm_std": [0.26862954, 0.26130258, 0.27577711],
        "dtype": "bfloat16",
        "text_config": _text_config(spec),
        "vision_config": _vision_config(spec),
        "sound_config": _sound_config(spec),
    }


# ---------------------------------------------------------------- weights


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def _fill(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A deterministic value for one tensor, chosen by its role so the random model
    stays numerically tame (unit norms, zero biases, Mamba's usual A/D/dt init)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.zeros(shape, dtype=torch.int64)
    if leaf in ("bias", "running_mean"):
        return torch.zeros(shape)
    if leaf == "A_log":
        return torch.log(torch.arange(1, shape[0] + 1, dtype=torch.float32))
    if leaf == "D":
        return torch.ones(shape)
    if leaf == "e_score_correction_bias":
        # Distinct per expert, so a check that loaded experts in the wrong order fails.
        return torch.randn(shape, generator=_generator(seed, name)) * 0.01
    if leaf == "dt_bias":
        dt = torch.exp(torch.rand(shape, generator=_generator(seed, name)) * 4.6 - 6.9)
        return dt + torch.log(-torch.expm1(-dt))  # inverse softplus of dt in [1e-3, 0.1]
    if len(shape) == 1:  # norm weights, running_var
        return torch.ones(shape)
    return torch.randn(shape, generator=_generator(seed, name)) * 0.02


def _llm_shapes(spec: TinySpec) -> dict[str, tuple[int, ...]]:
    from transformers import NemotronHConfig, NemotronHForCausalLM

    with torch.device("meta"):
        model = NemotronHForCausalLM(NemotronHConfig(**_text_config(spec)))
    # Hugging Face checkpoints name the LLM trunk "backbone" (transformers 5 says "model").
    shapes = {}
    for k, v in model.state_dict().items():
        name = "language_model." + re.sub(r"^model\.", "backbone.", k)
        fused = re.fullmatch(r"(.*\.mixer\.experts)\.((?:up|down)_proj)", name)
        if fused:
            # transformers holds all experts in one [E, out, in] tensor; checkpoints store
            # one linear weight per expert (what vLLM's and transformers' loaders read).
            for i in range(v.shape[0]):
                shapes[f"{fused[1]}.{i}.{fused[2]}.weight"] = tuple(v.shape[1:])
            continue
        shapes[name] = tuple(v.shape)
    return shapes


def _sound_shapes(spec: TinySpec) -> dict[str, tuple[int, ...]]:
    from transformers import ParakeetEncoder, ParakeetEncoderConfig

    sound = _sound_config(spec)
    assert sound is not None
    encoder_keys = {
        k: v
        for k, v in sound.items()
        if k not in ("model_type", "sampling_rate", "projection_hidden_size", "projection_bias")
    }
    # The same settings vLLM forces when it builds the encoder.
    cfg = ParakeetEncoderConfig(**encoder_keys, scale_input=False, attention_bias=False)
    with torch.device("meta"):
        encoder = ParakeetEncoder(cfg)
    shapes = {f"sound_encoder.encoder.{k}": tuple(v.shape) for k, v in encoder.state_dict().items()}
    proj = sound["projection_hidden_size"]
    shapes.update(
        {
            "sound_projection.norm.weight": (SOUND_HIDDEN,),
            "sound_projection.linear1.weight": (proj, SOUND_HIDDEN),
            "sound_projection.linear2.weight": (LLM_HIDDEN, proj),
        }
    )
    return shapes


def _vision_shapes(spec: TinySpec) -> dict[str, tuple[int, ...]]:
    # Hugging Face RADIO (timm ViT) names; vLLM's RadioModel.load_weights maps them.
    p, d, mlp = 16, VIT_HIDDEN, 4 * VIT_HIDDEN
    n_cls = 2  # one CLS token per teacher
    n_tokens = n_cls + (8 - n_cls % 8)  # padded to register_multiple
    grid = CPE_MAX_SIZE // p
    prefix = "vision_model.radio_model.model."
    shapes = {
        prefix + "patch_generator.embedder.weight": (d, 3 * p * p),
        prefix + "patch_generator.pos_embed": (1, grid * grid, d),
        prefix + "patch_generator.cls_token.token": (n_tokens, d),
    }
    if spec.video_temporal_patch_size > 1:
        t = spec.video_temporal_patch_size
        shapes[prefix + "patch_generator.video_embedder.weight"] = (d, 3 * t * p * p)
    for i in range(VIT_LAYERS):
        b = f"{prefix}blocks.{i}."
        shapes.update(
            {
                b + "norm1.weight": (d,),
                b + "norm1.bias": (d,),
                b + "norm2.weight": (d,),
                b + "norm2.bias": (d,),
                b + "attn.qkv.weight": (3 * d, d),
                b + "attn.qkv.bias": (3 * d,),
                b + "attn.proj.weight": (d, d),
                b + "attn.proj.bias": (d,),
                b + "mlp.fc1.weight": (mlp, d),
                b + "mlp.fc1.bias": (mlp,),
                b + "mlp.fc2.weight": (d, mlp),
                b + "mlp.fc2.bias": (d,),
            }
        )
    return shapes


def _projector_shapes() -> dict[str, tuple[int, ...]]:
    shuffled = VIT_HIDDEN * 4  # pixel shuffle with downsample_ratio 0.5
    return {
        "mlp1.0.weight": (shuffled,),
        "mlp1.1.weight": (PROJECTOR_HIDDEN, shuffled),
        "mlp1.3.weight": (LLM_HIDDEN, PROJECTOR_HIDDEN),
    }


def checkpoint_tensors(spec: TinySpec) -> dict[str, torch.Tensor]:
    shapes = {**_llm_shapes(spec), **_projector_shapes(), **_vision_shapes(spec)}
    if spec.has_audio:
        shapes.update(_sound_shapes(spec))
    tensors = {}
    for name, shape in sorted(shapes.items()):
        t = _fill(name, shape, spec.seed)
        # vLLM keeps the MoE router's correction bias in float32; everything else is bf16.
        if t.dtype != torch.int64 and not name.endswith(".e_score_correction_bias"):
            t = t.to(torch.bfloat16)
        tensors[name] = t.contiguous()
    return tensors


# ---------------------------------------------------------------- tokenizer


def _write_tokenizer(out: Path, spec: TinySpec) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for sym in byte_symbols:
        vocab[sym] = len(vocab)
    reserved = [f"<|reserved_{i}|>" for i in range(VOCAB_SIZE - len(vocab))]
    # V3: the tool-call tags take the first reserved ids (every other id is V2's).
    plain: tuple[str, ...] = ()
    if spec.is_v3:
        reserved[: len(V3_TOOL_TOKENS)] = V3_TOOL_TOKENS
        vocab.update({t: len(vocab) + i for i, t in enumerate(V3_TOOL_TOKENS)})
        plain = ("<think>", "</think>", *V3_TOOL_TOKENS)
    # No merges: every byte is a token, so decode→encode round-trips exactly, which
    # vLLM's prompt-update matching relies on.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([t for t in list(SPECIAL_TOKENS) + reserved if t not in plain])
    if plain:
        # Not special, so they stay in the detokenized text the reasoning and tool
        # parsers read (as in the Nemotron 3 / Qwen3 tokenizers).
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=8192,
        chat_template=V3_CHAT_TEMPLATE if spec.is_v3 else CHAT_TEMPLATE,
    )
    fast.save_pretrained(str(out))
    assert len(fast) == VOCAB_SIZE, len(fast)


# ---------------------------------------------------------------- build + cache


def build_tiny_checkpoint(out_dir: str | os.PathLike, variant: Variant = "full", seed: int = 0) -> Path:
    """Write a complete checkpoint directory (atomically: a half-written one never appears)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    spec = TinySpec(variant=variant, seed=seed)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(checkpoint_config(spec), indent=2, sort_keys=True) + "\n")
        shutil.copyfile(config_module.__file__, tmp / CONFIG_MODULE_FILE)
        # V3 chat turns end with <|im_end|>, as the real models' do.
        eos = [2, SPECIAL_TOKENS.index("<|im_end|>")] if spec.is_v3 else 2
        (tmp / "generation_config.json").write_text(
            json.dumps({"bos_token_id": 1, "eos_token_id": eos, "pad_token_id": 3}, indent=2, sort_keys=True) + "\n"
        )
        _write_tokenizer(tmp, spec)
        save_file(checkpoint_tensors(spec), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def cache_root() -> Path:
    root = os.environ.get("NANOVL_CACHE_DIR")
    if root:
        return Path(root)
    return Path(__file__).resolve().parent.parent / ".cache"


def ensure_tiny_checkpoint(variant: Variant = "full", seed: int = 0) -> Path:
    """The cached checkpoint for ``variant``, built on first use."""
    path = cache_root() / "checkpoints" / f"tiny-{variant}-s{seed}-v{BUILDER_VERSION}"
    if not (path / "model.safetensors").exists():
        build_tiny_checkpoint(path, variant=variant, seed=seed)
    return path
