"""nanovl: the public package.

- ``nanovl.v1``: the generated protobuf stubs of the API (``protos/nanovl/v1``).
- ``nanovl.errors``, ``nanovl.modalities``, ``nanovl.units``, ``nanovl.media_specs``: the
  bottom layer every other package builds on (status-carrying errors, the modality
  vocabulary, byte sizes, media item sizes and their parsers).
- ``nanovl.client``: the Python client. Its names are re-exported here, imported on first
  use, so ``import nanovl`` stays cheap and importing the core never loads the client::

      from nanovl import AsyncInferenceClient, Part, Sampling

- ``nanovl.cli``: the ``nanovl`` command line.

Nothing here imports torch, transformers or vLLM.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("nanovl")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from nanovl.client import *  # noqa: F403


def __getattr__(name: str) -> Any:
    # PEP 562: the client's names, loaded on first use (the server imports nanovl.errors
    # and nanovl.v1 without paying for the client).
    client = importlib.import_module("nanovl.client")
    if name in client.__all__:
        return getattr(client, name)
    raise AttributeError(f"module 'nanovl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *importlib.import_module("nanovl.client").__all__])
