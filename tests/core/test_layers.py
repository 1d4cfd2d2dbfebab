"""The package layers hold at run time too: the public client needs no engine code, and
the worker extension named as a string by the service layer resolves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_public_client_imports_neither_torch_nor_vllm() -> None:
    probe = (
        "import sys\nimport nanovl\nfrom nanovl import AsyncInferenceClient, InferenceClient, Part, Sampling, Delta\n"
        "import nanovl.errors, nanovl.modalities, nanovl.units, nanovl.media_specs\n"
        "heavy = ('torch', 'vllm', 'transformers', 'service', 'model', 'profiling')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_importing_the_core_does_not_load_the_client() -> None:
    probe = "import sys\nimport nanovl.errors, nanovl.v1.inference_pb2\nprint('nanovl.client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_worker_extension_name_resolves() -> None:
    from vllm.utils.import_utils import resolve_obj_by_qualname

    from profiling.worker_extension import NanovlWorkerExtension
    from service.engine import WORKER_EXTENSION_CLS

    assert resolve_obj_by_qualname(WORKER_EXTENSION_CLS) is NanovlWorkerExtension
