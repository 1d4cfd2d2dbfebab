"""nanovl's vLLM general plugin: serves this model through ``model.vllm_exact_sizing``.

Three ways it runs in every process that builds vLLM's multimodal budget (front end,
engine core, workers), all idempotent:

- vLLM calls :func:`register` in each of its processes through the
  ``vllm.general_plugins`` entry point declared in ``pyproject.toml``
  (``vllm/plugins/__init__.py::load_general_plugins``) once nanovl is installed;
- the ``--exact-mm-sizing`` declaration itself travels to the engine core and worker
  processes inside the pickled model config (``hf_overrides`` and ``hf_config``) as a
  :class:`CarriedDeclaration`, which registers the class in the process that unpickles it,
  before vLLM builds anything there (a checkout that is not installed, e.g. a worktree on a
  shared environment, has no entry point, and vLLM's engine core process never imports
  nanovl's worker extension);
- nanovl calls it in its server process and in the worker (``profiling/worker_extension.py``).

It only registers a class, which behaves exactly like vLLM's own unless the model config
carries a declaration.
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
    # vLLM memoises each model config's resolved class (``get_model_architecture`` in
    # ``vllm/model_executor/model_loader/utils.py``): a config resolved in this process before
    # this call would keep vLLM's own class, and with it vLLM's sizing. Forget those.
    from vllm.model_executor.model_loader import utils as loader_utils

    memo = getattr(loader_utils, "_MODEL_ARCH_BY_HASH", None)
    if isinstance(memo, dict):
        memo.clear()


class CarriedDeclaration(dict):  # type: ignore[type-arg]
    """The JSON form of a declaration (``model.item_maxima.ItemMaxima.to_config``), as a
    dict that registers nanovl's model class in whichever process unpickles it (see the
    module docstring). Equal to, and serialised as, the plain dict."""

    def __reduce__(self) -> tuple:
        return (_restore, (dict(self),))


def _restore(data: dict) -> CarriedDeclaration:
    register()
    return CarriedDeclaration(data)
