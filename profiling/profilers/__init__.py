"""Profilers that drive a running server: py-spy CPU captures and vLLM's torch profiler."""
