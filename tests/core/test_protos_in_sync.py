"""The committed stubs in nanovl/v1/ must be exactly what protos/ generates, and usable."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HINT = "generated stubs are out of date: run `make protos` and commit nanovl/v1/"


def _load_gen_protos():
    spec = importlib.util.spec_from_file_location("gen_protos", REPO_ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_protos", module)
    spec.loader.exec_module(module)
    return module


gen_protos = _load_gen_protos()


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("protos")
    return out, gen_protos.generate(out)


def test_every_proto_has_committed_stubs(regenerated: tuple[Path, list[Path]]) -> None:
    _, generated = regenerated
    committed = sorted(
        p.relative_to(REPO_ROOT) for p in (REPO_ROOT / gen_protos.PACKAGE_DIR).iterdir() if gen_protos.is_generated(p)
    )
    assert committed == generated, f"{HINT} (expected {generated}, found {committed})"


def test_committed_stubs_match_protos(regenerated: tuple[Path, list[Path]]) -> None:
    out, generated = regenerated
    assert generated, "protoc produced no stubs"
    stale = [
        str(rel)
        for rel in generated
        if not (REPO_ROOT / rel).is_file() or (REPO_ROOT / rel).read_bytes() != (out / rel).read_bytes()
    ]
    assert not stale, f"{HINT} (differs: {', '.join(stale)})"


@pytest.mark.parametrize(
    ("module", "service", "methods"),
    [
        ("inference", "Inference", {"Generate", "StreamGenerate", "GetModelInfo"}),
        (
            "profiling",
            "Profiling",
            {
                "GetBudget",
                "PlanBudget",
                "RunDummyProfile",
                "CaptureCpuProfile",
                "StartTorchProfile",
                "StopTorchProfile",
            },
        ),
    ],
)
def test_services_are_reflectable(module: str, service: str, methods: set[str]) -> None:
    pb2 = importlib.import_module(f"nanovl.v1.{module}_pb2")
    pb2_grpc = importlib.import_module(f"nanovl.v1.{module}_pb2_grpc")
    descriptor = pb2.DESCRIPTOR.services_by_name[service]
    assert descriptor.full_name == f"nanovl.v1.{service}"
    assert {m.name for m in descriptor.methods} == methods
    # The grpc stubs must exist for the same service (server registration + client stub).
    assert hasattr(pb2_grpc, f"{service}Stub")
    assert hasattr(pb2_grpc, f"add_{service}Servicer_to_server")


def test_streaming_shapes() -> None:
    from nanovl.v1 import inference_pb2, profiling_pb2

    inference = inference_pb2.DESCRIPTOR.services_by_name["Inference"].methods_by_name
    assert (inference["Generate"].client_streaming, inference["Generate"].server_streaming) == (False, True)
    assert (inference["StreamGenerate"].client_streaming, inference["StreamGenerate"].server_streaming) == (
        True,
        True,
    )
    assert not inference["GetModelInfo"].server_streaming
    profiling = profiling_pb2.DESCRIPTOR.services_by_name["Profiling"].methods_by_name
    assert profiling["CaptureCpuProfile"].server_streaming
