"""The committed gRPC modules are exactly what grpcio-tools generates from shared/proto/recommend.proto."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTO = Path("shared/proto/recommend.proto")
GENERATED = ("recommend_pb2.py", "recommend_pb2_grpc.py", "recommend_pb2.pyi")


def test_generated_modules_match_the_proto(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools (dev dependency) not installed")
    (tmp_path / PROTO.parent).mkdir(parents=True)
    shutil.copy(ROOT / PROTO, tmp_path / PROTO)
    code = protoc.main(["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}",
                        f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}", str(tmp_path / PROTO)])
    assert code == 0
    for name in GENERATED:
        regenerated = (tmp_path / PROTO.parent / name).read_text()
        assert regenerated == (ROOT / PROTO.parent / name).read_text(), (
            f"shared/proto/{name} is stale: regenerate it (docs/serving.md)")
