"""Deterministic builder for tiny, randomly initialised ``NemotronH_Nano_VL_V2`` checkpoints.

No weights can be downloaded on CI machines, so nanovl builds its own checkpoint of the
real architecture (hybrid Mamba2/attention LLM, RADIO tower, Parakeet encoder, the
real processor and chat conventions) at a few million parameters. Outputs are noise;
every code path that serves them is the real one.

Same ``(variant, seed, BUILDER_VERSION)`` → byte-identical files: tensors are drawn from
a generator seeded by ``(seed, tensor name)``, so they do not depend on module
construction order or library init code.
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
from typing import Literal

import torch
from safetensors.torch import save_file

from model import config as config_module
from model.config import MODEL_TYPE

# Bump when the bytes a builder writes change: the cache is keyed by it.
BUILDER_VERSION = 2

Variant = Literal["full", "no-audio", "dynamic"]
VARIANTS: tuple[Variant, ...] = ("full", "no-audio", "dynamic")

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


@dataclass(frozen=True)
class TinySpec:
    """What distinguishes the variants."""

    variant: Variant = "full"
    seed: int = 0

    @property
    def has_audio(self) -> bool:
        return self.variant != "no-audio"

    @property
    def dynamic_resolution(self) -> bool:
        return self.variant == "dynamic"

    @property
    def video_temporal_patch_size(self) -> int:
        return 2 if self.variant == "dynamic" else 1


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
    return {
        "model_type": "nemotron_nano_vl_radio",
        "args": args,
        "preferred_resolution": [224, 224],
        "patch_size": 16,
        "video_temporal_patch_size": spec.video_temporal_patch_size,
        "separate_video_embedder": True,
        "video_maintain_aspect_ratio": False,
        "layer_norm_eps": 1e-6,
    }


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
        "architectures": [MODEL_TYPE],
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
    return {
        "language_model." + re.sub(r"^model\.", "backbone.", k): tuple(v.shape) for k, v in model.state_dict().items()
    }


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
        tensors[name] = (t if t.dtype == torch.int64 else t.to(torch.bfloat16)).contiguous()
    return tensors


# ---------------------------------------------------------------- tokenizer


def _write_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for sym in byte_symbols:
        vocab[sym] = len(vocab)
    reserved = [f"<|reserved_{i}|>" for i in range(VOCAB_SIZE - len(vocab))]
    # No merges: every byte is a token, so decode→encode round-trips exactly, which
    # vLLM's prompt-update matching relies on.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS) + reserved)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=8192,
        chat_template=CHAT_TEMPLATE,
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
        (tmp / "generation_config.json").write_text(
            json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}, indent=2, sort_keys=True) + "\n"
        )
        _write_tokenizer(tmp)
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
