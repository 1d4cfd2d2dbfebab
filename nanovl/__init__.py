"""nanovl: the public API package (generated protobuf stubs under ``nanovl.v1``)."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("nanovl")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
