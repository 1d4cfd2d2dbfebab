"""nanovl's vLLM general plugin: serves this model through ``model.vllm_exact_sizing``.

vLLM calls :func:`register` in every one of its processes (front end, engine core,
workers) through the ``vllm.general_plugins`` entry point declared in ``pyproject.toml``
(``vllm/plugins/__init__.py::load_general_plugins``); nanovl also calls it itself in its
server process and in the engine's worker (``profiling/worker_extension.py``). It must be
cheap and safe to call many times: it only registers a class name, and the class behaves
exactly like vLLM's own unless the model config carries an ``--exact-mm-sizing``
declaration.
"""

from __future__ import annotations

from model.checkpoint import SERVED_ARCHITECTURES

MODEL_CLASS = "model.vllm_exact_sizing:NemotronNanoVLExactSizing"


def register(*, eager: bool = False) -> None:
    """Make every architecture vLLM serves with ``NemotronH_Nano_VL_V2`` use
    ``NemotronNanoVLExactSizing`` (``ModelRegistry.register_model``).

    ``eager``: register the class object (imports vLLM's model module now; for processes
    that already run vLLM) instead of its name, which vLLM imports on first use and
    inspects once in a subprocess (vLLM's advice for plugins: no device initialised at
    plugin load)."""
    from vllm import ModelRegistry

    if eager:
        from model.vllm_exact_sizing import NemotronNanoVLExactSizing

        target: object = NemotronNanoVLExactSizing
    else:
        target = MODEL_CLASS
    for arch in SERVED_ARCHITECTURES:
        ModelRegistry.register_model(arch, target)  # type: ignore[arg-type]
