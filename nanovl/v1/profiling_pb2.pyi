from nanovl.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProcessRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROCESS_ROLE_UNSPECIFIED: _ClassVar[ProcessRole]
    PROCESS_ROLE_SERVER: _ClassVar[ProcessRole]
    PROCESS_ROLE_ENGINE_CORE: _ClassVar[ProcessRole]
    PROCESS_ROLE_WORKER: _ClassVar[ProcessRole]

class PlanConstraint(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLAN_CONSTRAINT_UNSPECIFIED: _ClassVar[PlanConstraint]
    PLAN_CONSTRAINT_TOKENS: _ClassVar[PlanConstraint]
    PLAN_CONSTRAINT_ENCODER_CACHE: _ClassVar[PlanConstraint]
    PLAN_CONSTRAINT_MEMORY: _ClassVar[PlanConstraint]

class CpuProfileFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CPU_PROFILE_FORMAT_UNSPECIFIED: _ClassVar[CpuProfileFormat]
    CPU_PROFILE_FORMAT_SPEEDSCOPE: _ClassVar[CpuProfileFormat]
    CPU_PROFILE_FORMAT_FLAMEGRAPH_SVG: _ClassVar[CpuProfileFormat]

class TorchProfileEnd(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TORCH_PROFILE_END_UNSPECIFIED: _ClassVar[TorchProfileEnd]
    TORCH_PROFILE_END_STOPPED: _ClassVar[TorchProfileEnd]
    TORCH_PROFILE_END_STEPS: _ClassVar[TorchProfileEnd]
    TORCH_PROFILE_END_DURATION: _ClassVar[TorchProfileEnd]
    TORCH_PROFILE_END_MEMORY: _ClassVar[TorchProfileEnd]
PROCESS_ROLE_UNSPECIFIED: ProcessRole
PROCESS_ROLE_SERVER: ProcessRole
PROCESS_ROLE_ENGINE_CORE: ProcessRole
PROCESS_ROLE_WORKER: ProcessRole
PLAN_CONSTRAINT_UNSPECIFIED: PlanConstraint
PLAN_CONSTRAINT_TOKENS: PlanConstraint
PLAN_CONSTRAINT_ENCODER_CACHE: PlanConstraint
PLAN_CONSTRAINT_MEMORY: PlanConstraint
CPU_PROFILE_FORMAT_UNSPECIFIED: CpuProfileFormat
CPU_PROFILE_FORMAT_SPEEDSCOPE: CpuProfileFormat
CPU_PROFILE_FORMAT_FLAMEGRAPH_SVG: CpuProfileFormat
TORCH_PROFILE_END_UNSPECIFIED: TorchProfileEnd
TORCH_PROFILE_END_STOPPED: TorchProfileEnd
TORCH_PROFILE_END_STEPS: TorchProfileEnd
TORCH_PROFILE_END_DURATION: TorchProfileEnd
TORCH_PROFILE_END_MEMORY: TorchProfileEnd

class MediaItems(_message.Message):
    __slots__ = ("count", "image", "video", "audio")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    count: int
    image: ImageItem
    video: VideoItem
    audio: AudioItem
    def __init__(self, count: _Optional[int] = ..., image: _Optional[_Union[ImageItem, _Mapping]] = ..., video: _Optional[_Union[VideoItem, _Mapping]] = ..., audio: _Optional[_Union[AudioItem, _Mapping]] = ...) -> None: ...

class ImageItem(_message.Message):
    __slots__ = ("width", "height")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class VideoItem(_message.Message):
    __slots__ = ("num_frames", "width", "height", "fps", "frame_indices", "frame_times_s")
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDICES_FIELD_NUMBER: _ClassVar[int]
    FRAME_TIMES_S_FIELD_NUMBER: _ClassVar[int]
    num_frames: int
    width: int
    height: int
    fps: float
    frame_indices: _containers.RepeatedScalarFieldContainer[int]
    frame_times_s: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, num_frames: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., fps: _Optional[float] = ..., frame_indices: _Optional[_Iterable[int]] = ..., frame_times_s: _Optional[_Iterable[float]] = ...) -> None: ...

class AudioItem(_message.Message):
    __slots__ = ("seconds",)
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    seconds: float
    def __init__(self, seconds: _Optional[float] = ...) -> None: ...

class GetBudgetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Budget(_message.Message):
    __slots__ = ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "limit_mm_per_prompt", "modalities", "encoder", "kv_cache", "mamba_state_bytes_per_seq", "weights_bytes", "processes", "gpu", "exact_sizing")
    class LimitMmPerPromptEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_BATCHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_MM_PER_PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_FIELD_NUMBER: _ClassVar[int]
    MAMBA_STATE_BYTES_PER_SEQ_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    EXACT_SIZING_FIELD_NUMBER: _ClassVar[int]
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    limit_mm_per_prompt: _containers.ScalarMap[str, int]
    modalities: _containers.RepeatedCompositeFieldContainer[ModalityBudget]
    encoder: EncoderBudget
    kv_cache: KvCacheCapacity
    mamba_state_bytes_per_seq: int
    weights_bytes: int
    processes: _containers.RepeatedCompositeFieldContainer[ProcessMemory]
    gpu: GpuMemory
    exact_sizing: ExactSizing
    def __init__(self, max_model_len: _Optional[int] = ..., max_num_seqs: _Optional[int] = ..., max_num_batched_tokens: _Optional[int] = ..., limit_mm_per_prompt: _Optional[_Mapping[str, int]] = ..., modalities: _Optional[_Iterable[_Union[ModalityBudget, _Mapping]]] = ..., encoder: _Optional[_Union[EncoderBudget, _Mapping]] = ..., kv_cache: _Optional[_Union[KvCacheCapacity, _Mapping]] = ..., mamba_state_bytes_per_seq: _Optional[int] = ..., weights_bytes: _Optional[int] = ..., processes: _Optional[_Iterable[_Union[ProcessMemory, _Mapping]]] = ..., gpu: _Optional[_Union[GpuMemory, _Mapping]] = ..., exact_sizing: _Optional[_Union[ExactSizing, _Mapping]] = ...) -> None: ...

class ExactSizing(_message.Message):
    __slots__ = ("setting", "vllm_default", "applied", "items")
    SETTING_FIELD_NUMBER: _ClassVar[int]
    VLLM_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    setting: str
    vllm_default: EncoderSizing
    applied: EncoderSizing
    items: _containers.RepeatedCompositeFieldContainer[ItemMaximum]
    def __init__(self, setting: _Optional[str] = ..., vllm_default: _Optional[_Union[EncoderSizing, _Mapping]] = ..., applied: _Optional[_Union[EncoderSizing, _Mapping]] = ..., items: _Optional[_Iterable[_Union[ItemMaximum, _Mapping]]] = ...) -> None: ...

class EncoderSizing(_message.Message):
    __slots__ = ("max_tokens_per_item", "compute_budget_tokens", "cache_size_tokens", "cache_size_bytes", "profile_modality", "profile_items")
    class MaxTokensPerItemEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MAX_TOKENS_PER_ITEM_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_BUDGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SIZE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROFILE_MODALITY_FIELD_NUMBER: _ClassVar[int]
    PROFILE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    max_tokens_per_item: _containers.ScalarMap[str, int]
    compute_budget_tokens: int
    cache_size_tokens: int
    cache_size_bytes: int
    profile_modality: _inference_pb2.Modality
    profile_items: int
    def __init__(self, max_tokens_per_item: _Optional[_Mapping[str, int]] = ..., compute_budget_tokens: _Optional[int] = ..., cache_size_tokens: _Optional[int] = ..., cache_size_bytes: _Optional[int] = ..., profile_modality: _Optional[_Union[_inference_pb2.Modality, str]] = ..., profile_items: _Optional[int] = ...) -> None: ...

class ItemMaximum(_message.Message):
    __slots__ = ("modality", "declared", "derived_from_media_limits", "num_frames", "width", "height", "last_frame_s", "seconds", "exact_tokens", "vllm_default_tokens", "applied_tokens")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    DECLARED_FIELD_NUMBER: _ClassVar[int]
    DERIVED_FROM_MEDIA_LIMITS_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    LAST_FRAME_S_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXACT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    VLLM_DEFAULT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    modality: _inference_pb2.Modality
    declared: str
    derived_from_media_limits: bool
    num_frames: int
    width: int
    height: int
    last_frame_s: float
    seconds: float
    exact_tokens: int
    vllm_default_tokens: int
    applied_tokens: int
    def __init__(self, modality: _Optional[_Union[_inference_pb2.Modality, str]] = ..., declared: _Optional[str] = ..., derived_from_media_limits: _Optional[bool] = ..., num_frames: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., last_frame_s: _Optional[float] = ..., seconds: _Optional[float] = ..., exact_tokens: _Optional[int] = ..., vllm_default_tokens: _Optional[int] = ..., applied_tokens: _Optional[int] = ...) -> None: ...

class ModalityBudget(_message.Message):
    __slots__ = ("modality", "item_limit", "vllm_max_tokens_per_item", "nanovl_max_tokens_per_item", "largest_item")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    ITEM_LIMIT_FIELD_NUMBER: _ClassVar[int]
    VLLM_MAX_TOKENS_PER_ITEM_FIELD_NUMBER: _ClassVar[int]
    NANOVL_MAX_TOKENS_PER_ITEM_FIELD_NUMBER: _ClassVar[int]
    LARGEST_ITEM_FIELD_NUMBER: _ClassVar[int]
    modality: _inference_pb2.Modality
    item_limit: int
    vllm_max_tokens_per_item: int
    nanovl_max_tokens_per_item: int
    largest_item: MediaItems
    def __init__(self, modality: _Optional[_Union[_inference_pb2.Modality, str]] = ..., item_limit: _Optional[int] = ..., vllm_max_tokens_per_item: _Optional[int] = ..., nanovl_max_tokens_per_item: _Optional[int] = ..., largest_item: _Optional[_Union[MediaItems, _Mapping]] = ...) -> None: ...

class EncoderBudget(_message.Message):
    __slots__ = ("compute_budget_tokens", "compute_budget_bytes", "cache_size_tokens", "cache_size_bytes", "profiled_modality", "profiled_items", "vllm_profile_modality", "vllm_profile_items", "profile_note")
    COMPUTE_BUDGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    CACHE_SIZE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROFILED_MODALITY_FIELD_NUMBER: _ClassVar[int]
    PROFILED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    VLLM_PROFILE_MODALITY_FIELD_NUMBER: _ClassVar[int]
    VLLM_PROFILE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_NOTE_FIELD_NUMBER: _ClassVar[int]
    compute_budget_tokens: int
    compute_budget_bytes: int
    cache_size_tokens: int
    cache_size_bytes: int
    profiled_modality: _inference_pb2.Modality
    profiled_items: int
    vllm_profile_modality: _inference_pb2.Modality
    vllm_profile_items: int
    profile_note: str
    def __init__(self, compute_budget_tokens: _Optional[int] = ..., compute_budget_bytes: _Optional[int] = ..., cache_size_tokens: _Optional[int] = ..., cache_size_bytes: _Optional[int] = ..., profiled_modality: _Optional[_Union[_inference_pb2.Modality, str]] = ..., profiled_items: _Optional[int] = ..., vllm_profile_modality: _Optional[_Union[_inference_pb2.Modality, str]] = ..., vllm_profile_items: _Optional[int] = ..., profile_note: _Optional[str] = ...) -> None: ...

class KvCacheCapacity(_message.Message):
    __slots__ = ("num_blocks", "block_size", "tokens", "bytes", "capacity_tokens", "max_concurrency")
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    num_blocks: int
    block_size: int
    tokens: int
    bytes: int
    capacity_tokens: int
    max_concurrency: float
    def __init__(self, num_blocks: _Optional[int] = ..., block_size: _Optional[int] = ..., tokens: _Optional[int] = ..., bytes: _Optional[int] = ..., capacity_tokens: _Optional[int] = ..., max_concurrency: _Optional[float] = ...) -> None: ...

class ProcessMemory(_message.Message):
    __slots__ = ("pid", "role", "rss_bytes", "name")
    PID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    pid: int
    role: ProcessRole
    rss_bytes: int
    name: str
    def __init__(self, pid: _Optional[int] = ..., role: _Optional[_Union[ProcessRole, str]] = ..., rss_bytes: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class GpuMemory(_message.Message):
    __slots__ = ("allocated_bytes", "reserved_bytes", "peak_allocated_bytes", "total_bytes")
    ALLOCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESERVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_ALLOCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    allocated_bytes: int
    reserved_bytes: int
    peak_allocated_bytes: int
    total_bytes: int
    def __init__(self, allocated_bytes: _Optional[int] = ..., reserved_bytes: _Optional[int] = ..., peak_allocated_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class PlanBudgetRequest(_message.Message):
    __slots__ = ("items", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "memory_budget_bytes", "model_path", "text_tokens")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_BATCHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    TEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[MediaItems]
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    memory_budget_bytes: int
    model_path: str
    text_tokens: int
    def __init__(self, items: _Optional[_Iterable[_Union[MediaItems, _Mapping]]] = ..., max_model_len: _Optional[int] = ..., max_num_seqs: _Optional[int] = ..., max_num_batched_tokens: _Optional[int] = ..., memory_budget_bytes: _Optional[int] = ..., model_path: _Optional[str] = ..., text_tokens: _Optional[int] = ...) -> None: ...

class BudgetPlan(_message.Message):
    __slots__ = ("modalities", "media_prompt_tokens", "accepted", "reason", "encoder_cache", "memory", "predicted_total_bytes", "recommended_limit_mm_per_prompt", "largest_items_that_fit", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "prompt_tokens", "vllm_memory", "vllm_predicted_total_bytes", "vllm_profiled_modality", "vllm_profiled_items", "binding_constraints", "admitting_max_model_len", "admitting_memory_bytes", "admitting_max_num_batched_tokens", "recommendation_note")
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    MEDIA_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ENCODER_CACHE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDED_LIMIT_MM_PER_PROMPT_FIELD_NUMBER: _ClassVar[int]
    LARGEST_ITEMS_THAT_FIT_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_BATCHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    VLLM_MEMORY_FIELD_NUMBER: _ClassVar[int]
    VLLM_PREDICTED_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    VLLM_PROFILED_MODALITY_FIELD_NUMBER: _ClassVar[int]
    VLLM_PROFILED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    BINDING_CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    ADMITTING_MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    ADMITTING_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ADMITTING_MAX_NUM_BATCHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_NOTE_FIELD_NUMBER: _ClassVar[int]
    modalities: _containers.RepeatedCompositeFieldContainer[ModalityPlan]
    media_prompt_tokens: int
    accepted: bool
    reason: str
    encoder_cache: EncoderCachePlan
    memory: _containers.RepeatedCompositeFieldContainer[MemoryComponent]
    predicted_total_bytes: int
    recommended_limit_mm_per_prompt: str
    largest_items_that_fit: _containers.RepeatedCompositeFieldContainer[MediaItems]
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    prompt_tokens: int
    vllm_memory: _containers.RepeatedCompositeFieldContainer[MemoryComponent]
    vllm_predicted_total_bytes: int
    vllm_profiled_modality: _inference_pb2.Modality
    vllm_profiled_items: int
    binding_constraints: _containers.RepeatedScalarFieldContainer[PlanConstraint]
    admitting_max_model_len: int
    admitting_memory_bytes: int
    admitting_max_num_batched_tokens: int
    recommendation_note: str
    def __init__(self, modalities: _Optional[_Iterable[_Union[ModalityPlan, _Mapping]]] = ..., media_prompt_tokens: _Optional[int] = ..., accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., encoder_cache: _Optional[_Union[EncoderCachePlan, _Mapping]] = ..., memory: _Optional[_Iterable[_Union[MemoryComponent, _Mapping]]] = ..., predicted_total_bytes: _Optional[int] = ..., recommended_limit_mm_per_prompt: _Optional[str] = ..., largest_items_that_fit: _Optional[_Iterable[_Union[MediaItems, _Mapping]]] = ..., max_model_len: _Optional[int] = ..., max_num_seqs: _Optional[int] = ..., max_num_batched_tokens: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., vllm_memory: _Optional[_Iterable[_Union[MemoryComponent, _Mapping]]] = ..., vllm_predicted_total_bytes: _Optional[int] = ..., vllm_profiled_modality: _Optional[_Union[_inference_pb2.Modality, str]] = ..., vllm_profiled_items: _Optional[int] = ..., binding_constraints: _Optional[_Iterable[_Union[PlanConstraint, str]]] = ..., admitting_max_model_len: _Optional[int] = ..., admitting_memory_bytes: _Optional[int] = ..., admitting_max_num_batched_tokens: _Optional[int] = ..., recommendation_note: _Optional[str] = ...) -> None: ...

class ModalityPlan(_message.Message):
    __slots__ = ("modality", "count", "prompt_tokens_per_item", "encoder_tokens_per_item", "prompt_tokens", "vllm_max_tokens_per_item", "item")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_PER_ITEM_FIELD_NUMBER: _ClassVar[int]
    ENCODER_TOKENS_PER_ITEM_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    VLLM_MAX_TOKENS_PER_ITEM_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    modality: _inference_pb2.Modality
    count: int
    prompt_tokens_per_item: int
    encoder_tokens_per_item: int
    prompt_tokens: int
    vllm_max_tokens_per_item: int
    item: MediaItems
    def __init__(self, modality: _Optional[_Union[_inference_pb2.Modality, str]] = ..., count: _Optional[int] = ..., prompt_tokens_per_item: _Optional[int] = ..., encoder_tokens_per_item: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., vllm_max_tokens_per_item: _Optional[int] = ..., item: _Optional[_Union[MediaItems, _Mapping]] = ...) -> None: ...

class EncoderCachePlan(_message.Message):
    __slots__ = ("needed_tokens", "needed_bytes", "vllm_tokens", "vllm_bytes", "min_tokens")
    NEEDED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NEEDED_BYTES_FIELD_NUMBER: _ClassVar[int]
    VLLM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    VLLM_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    needed_tokens: int
    needed_bytes: int
    vllm_tokens: int
    vllm_bytes: int
    min_tokens: int
    def __init__(self, needed_tokens: _Optional[int] = ..., needed_bytes: _Optional[int] = ..., vllm_tokens: _Optional[int] = ..., vllm_bytes: _Optional[int] = ..., min_tokens: _Optional[int] = ...) -> None: ...

class MemoryComponent(_message.Message):
    __slots__ = ("component", "bytes", "note")
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    component: str
    bytes: int
    note: str
    def __init__(self, component: _Optional[str] = ..., bytes: _Optional[int] = ..., note: _Optional[str] = ...) -> None: ...

class RunDummyProfileRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[MediaItems]
    def __init__(self, items: _Optional[_Iterable[_Union[MediaItems, _Mapping]]] = ...) -> None: ...

class DummyProfileResult(_message.Message):
    __slots__ = ("modalities",)
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    modalities: _containers.RepeatedCompositeFieldContainer[ModalityProfile]
    def __init__(self, modalities: _Optional[_Iterable[_Union[ModalityProfile, _Mapping]]] = ...) -> None: ...

class ModalityProfile(_message.Message):
    __slots__ = ("modality", "count", "encoder_s", "peak_memory_increase_bytes", "memory_source", "tokens", "predicted_tokens", "predicted_memory_bytes", "item", "preprocess_s", "prompt_tokens", "predicted_prompt_tokens", "peak_rss_increase_bytes")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ENCODER_S_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_INCREASE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_S_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_INCREASE_BYTES_FIELD_NUMBER: _ClassVar[int]
    modality: _inference_pb2.Modality
    count: int
    encoder_s: float
    peak_memory_increase_bytes: int
    memory_source: str
    tokens: int
    predicted_tokens: int
    predicted_memory_bytes: int
    item: MediaItems
    preprocess_s: float
    prompt_tokens: int
    predicted_prompt_tokens: int
    peak_rss_increase_bytes: int
    def __init__(self, modality: _Optional[_Union[_inference_pb2.Modality, str]] = ..., count: _Optional[int] = ..., encoder_s: _Optional[float] = ..., peak_memory_increase_bytes: _Optional[int] = ..., memory_source: _Optional[str] = ..., tokens: _Optional[int] = ..., predicted_tokens: _Optional[int] = ..., predicted_memory_bytes: _Optional[int] = ..., item: _Optional[_Union[MediaItems, _Mapping]] = ..., preprocess_s: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., predicted_prompt_tokens: _Optional[int] = ..., peak_rss_increase_bytes: _Optional[int] = ...) -> None: ...

class CaptureCpuProfileRequest(_message.Message):
    __slots__ = ("duration_s", "rate_hz", "format", "processes", "native", "include_idle")
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    NATIVE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_IDLE_FIELD_NUMBER: _ClassVar[int]
    duration_s: float
    rate_hz: int
    format: CpuProfileFormat
    processes: _containers.RepeatedScalarFieldContainer[ProcessRole]
    native: bool
    include_idle: bool
    def __init__(self, duration_s: _Optional[float] = ..., rate_hz: _Optional[int] = ..., format: _Optional[_Union[CpuProfileFormat, str]] = ..., processes: _Optional[_Iterable[_Union[ProcessRole, str]]] = ..., native: _Optional[bool] = ..., include_idle: _Optional[bool] = ...) -> None: ...

class CpuProfileChunk(_message.Message):
    __slots__ = ("file_index", "file_name", "content_type", "pid", "role", "data", "last", "samples", "errors", "warning")
    FILE_INDEX_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    file_index: int
    file_name: str
    content_type: str
    pid: int
    role: ProcessRole
    data: bytes
    last: bool
    samples: int
    errors: int
    warning: str
    def __init__(self, file_index: _Optional[int] = ..., file_name: _Optional[str] = ..., content_type: _Optional[str] = ..., pid: _Optional[int] = ..., role: _Optional[_Union[ProcessRole, str]] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., samples: _Optional[int] = ..., errors: _Optional[int] = ..., warning: _Optional[str] = ...) -> None: ...

class StartTorchProfileRequest(_message.Message):
    __slots__ = ("profile_prefix", "delay_iterations", "max_iterations", "max_duration_s")
    PROFILE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    DELAY_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    profile_prefix: str
    delay_iterations: int
    max_iterations: int
    max_duration_s: float
    def __init__(self, profile_prefix: _Optional[str] = ..., delay_iterations: _Optional[int] = ..., max_iterations: _Optional[int] = ..., max_duration_s: _Optional[float] = ...) -> None: ...

class StartTorchProfileResponse(_message.Message):
    __slots__ = ("trace_dir", "max_iterations", "max_duration_s", "max_memory_growth_bytes")
    TRACE_DIR_FIELD_NUMBER: _ClassVar[int]
    MAX_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_GROWTH_BYTES_FIELD_NUMBER: _ClassVar[int]
    trace_dir: str
    max_iterations: int
    max_duration_s: float
    max_memory_growth_bytes: int
    def __init__(self, trace_dir: _Optional[str] = ..., max_iterations: _Optional[int] = ..., max_duration_s: _Optional[float] = ..., max_memory_growth_bytes: _Optional[int] = ...) -> None: ...

class StopTorchProfileRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StopTorchProfileResponse(_message.Message):
    __slots__ = ("trace_dir", "files", "ended_by", "duration_s", "peak_memory_growth_bytes", "trace_bytes", "warning")
    TRACE_DIR_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    ENDED_BY_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_GROWTH_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRACE_BYTES_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    trace_dir: str
    files: _containers.RepeatedScalarFieldContainer[str]
    ended_by: TorchProfileEnd
    duration_s: float
    peak_memory_growth_bytes: int
    trace_bytes: int
    warning: str
    def __init__(self, trace_dir: _Optional[str] = ..., files: _Optional[_Iterable[str]] = ..., ended_by: _Optional[_Union[TorchProfileEnd, str]] = ..., duration_s: _Optional[float] = ..., peak_memory_growth_bytes: _Optional[int] = ..., trace_bytes: _Optional[int] = ..., warning: _Optional[str] = ...) -> None: ...
