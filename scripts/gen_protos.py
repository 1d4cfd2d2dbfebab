"""Regenerate the committed protobuf/gRPC stubs in ``nanovl/v1/`` from ``protos/``.

Usage: ``uv run python scripts/gen_protos.py`` (what ``make protos`` runs).

Stubs are generated into a scratch directory first and then copied over, so a failed
``protoc`` never leaves half-written stubs behind, and stubs of deleted ``.proto`` files
are removed. ``tests/core/test_protos_in_sync.py`` calls :func:`generate` to check that the
committed stubs match the ``.proto`` sources.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
# The package the stubs live in, relative to both PROTO_ROOT and REPO_ROOT: the import
# path of each stub is the path of its .proto under PROTO_ROOT.
PACKAGE_DIR = Path("nanovl") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    """The ``.proto`` sources, relative to PROTO_ROOT, in a stable order."""
    return sorted(p.relative_to(PROTO_ROOT) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))


def is_generated(path: Path) -> bool:
    return path.name.endswith(GENERATED_SUFFIXES)


def generate(out_root: Path) -> list[Path]:
    """Run protoc for every proto into ``out_root``; return the stub paths relative to it."""
    # grpc_tools ships the well-known types (google/protobuf/struct.proto, ...).
    well_known = resources.files("grpc_tools") / "_proto"
    sources = proto_files()
    if not sources:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / PACKAGE_DIR}")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(s) for s in sources),
    ]
    # protoc resolves the relative source names against the -I roots.
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}: {' '.join(args)}")
    return sorted(p.relative_to(out_root) for p in out_root.rglob("*") if is_generated(p))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        target = REPO_ROOT / PACKAGE_DIR
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.iterdir():
            if is_generated(stale) and stale.relative_to(REPO_ROOT) not in generated:
                stale.unlink()
                print(f"removed {stale.relative_to(REPO_ROOT)}")
        for rel in generated:
            shutil.copyfile(Path(tmp) / rel, REPO_ROOT / rel)
            print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
