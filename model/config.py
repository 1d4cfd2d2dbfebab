"""Hugging Face configuration for ``NemotronH_Nano_VL_V2`` checkpoints.

This file is copied verbatim into every checkpoint directory nanovl builds and is
referenced from ``config.json`` through ``auto_map`` (loaded with
``trust_remote_code=True``), so it must stay self-contained: it may import only
``transformers``. The real Hugging Face checkpoints ship their own equivalent.

Sub-configs:
- ``text_config``: transformers' ``NemotronHConfig`` (hybrid Mamba2 / attention LLM).
- ``vision_config``: RADIO tower settings; vLLM passes every key of ``args`` to its
  ``RadioConfig``.
- ``sound_config``: Parakeet encoder settings, or ``None`` for a checkpoint without
  audio. vLLM builds its own Parakeet config from ``sound_config.to_dict()`` and adds
  ``scale_input``, ``attention_bias``, ``max_position_embeddings`` and
  ``llm_hidden_size`` itself, so those keys must never be stored here.
"""

from __future__ import annotations

from typing import Any

from transformers import NemotronHConfig, PretrainedConfig

MODEL_TYPE = "NemotronH_Nano_VL_V2"

# Keys vLLM adds to the Parakeet config itself; storing them breaks it with a
# duplicate-keyword error deep inside engine start-up.
SOUND_KEYS_OWNED_BY_VLLM = ("scale_input", "attention_bias", "max_position_embeddings", "llm_hidden_size")


class NemotronNanoVLVisionConfig(PretrainedConfig):
    model_type = "nemotron_nano_vl_radio"

    def __init__(
        self,
        args: dict[str, Any] | None = None,
        preferred_resolution: list[int] | None = None,
        patch_size: int = 16,
        video_temporal_patch_size: int = 1,
        separate_video_embedder: bool = True,
        video_maintain_aspect_ratio: bool = False,
        layer_norm_eps: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        self.args = dict(args or {})
        self.preferred_resolution = list(preferred_resolution or [224, 224])
        self.patch_size = patch_size
        self.video_temporal_patch_size = video_temporal_patch_size
        self.separate_video_embedder = separate_video_embedder
        self.video_maintain_aspect_ratio = video_maintain_aspect_ratio
        self.layer_norm_eps = layer_norm_eps
        super().__init__(**kwargs)


class NemotronNanoVLSoundConfig(PretrainedConfig):
    model_type = "nemotron_nano_vl_parakeet"

    def __init__(
        self,
        hidden_size: int = 1024,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 8,
        intermediate_size: int = 4096,
        hidden_act: str = "silu",
        conv_kernel_size: int = 9,
        convolution_bias: bool = True,
        subsampling_factor: int = 8,
        subsampling_conv_channels: int = 256,
        subsampling_conv_kernel_size: int = 3,
        subsampling_conv_stride: int = 2,
        num_mel_bins: int = 128,
        sampling_rate: int = 16000,
        projection_hidden_size: int = 4096,
        projection_bias: bool = False,
        **kwargs: Any,
    ) -> None:
        for key in SOUND_KEYS_OWNED_BY_VLLM:
            kwargs.pop(key, None)
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.conv_kernel_size = conv_kernel_size
        self.convolution_bias = convolution_bias
        self.subsampling_factor = subsampling_factor
        self.subsampling_conv_channels = subsampling_conv_channels
        self.subsampling_conv_kernel_size = subsampling_conv_kernel_size
        self.subsampling_conv_stride = subsampling_conv_stride
        self.num_mel_bins = num_mel_bins
        self.sampling_rate = sampling_rate
        self.projection_hidden_size = projection_hidden_size
        self.projection_bias = projection_bias
        super().__init__(**kwargs)


def _as_config(value: Any, cls: type[PretrainedConfig]) -> PretrainedConfig | None:
    if value is None or isinstance(value, PretrainedConfig):
        return value
    return cls(**value)


class NemotronNanoVLConfig(PretrainedConfig):
    model_type = MODEL_TYPE
    sub_configs = {
        "text_config": NemotronHConfig,
        "vision_config": NemotronNanoVLVisionConfig,
        "sound_config": NemotronNanoVLSoundConfig,
    }

    def __init__(
        self,
        text_config: dict[str, Any] | PretrainedConfig | None = None,
        vision_config: dict[str, Any] | PretrainedConfig | None = None,
        sound_config: dict[str, Any] | PretrainedConfig | None = None,
        force_image_size: int = 512,
        patch_size: int = 16,
        downsample_ratio: float = 0.5,
        use_thumbnail: bool = True,
        template: str = "nemotron_h",
        ps_version: str = "v2",
        image_tag_type: str = "internvl",
        vit_hidden_size: int = 1280,
        projector_hidden_size: int = 20480,
        norm_mean: list[float] | None = None,
        norm_std: list[float] | None = None,
        **kwargs: Any,
    ) -> None:
        self.text_config = _as_config(text_config if text_config is not None else {}, NemotronHConfig)
        self.vision_config = _as_config(vision_config if vision_config is not None else {}, NemotronNanoVLVisionConfig)
        # Always an attribute, even when absent: vLLM reads it unconditionally.
        self.sound_config = _as_config(sound_config, NemotronNanoVLSoundConfig)
        self.force_image_size = force_image_size
        self.patch_size = patch_size
        self.downsample_ratio = downsample_ratio
        self.use_thumbnail = use_thumbnail
        self.template = template
        self.ps_version = ps_version
        self.image_tag_type = image_tag_type
        self.vit_hidden_size = vit_hidden_size
        self.projector_hidden_size = projector_hidden_size
        self.norm_mean = list(norm_mean or [0.48145466, 0.4578275, 0.40821073])
        self.norm_std = list(norm_std or [0.26862954, 0.26130258, 0.27577711])
        super().__init__(**kwargs)

    def get_text_config(self, *args: Any, **kwargs: Any) -> PretrainedConfig:
        return self.text_config
