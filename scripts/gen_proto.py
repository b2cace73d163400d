"""Regenerate the Python code of proto/v1/*.proto into proto/v1/ (committed).

The .proto files import each other as "epochserve/proto/v1/<name>.proto", the path of the generated
modules inside the installed package, so the generated imports (`from epochserve.proto.v1 import
common_pb2`) work without rewriting. Usage: `python scripts/gen_proto.py [--out DIR]`.
--out writes elsewhere (tests/unit/test_proto_fresh.py compares that with what is committed).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO / "proto" / "v1"
IMPORT_PREFIX = "epochserve/proto/v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Generate every proto into out_dir; returns the generated files."""
    from grpc_tools import protoc  # dev extra; imported here so the package never needs it

    include = Path(protoc.__file__).parent / "_proto"
    protos = sorted(PROTO_DIR.glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"--proto_path={IMPORT_PREFIX}={PROTO_DIR}",
            f"--proto_path={include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[f"{IMPORT_PREFIX}/{p.name}" for p in protos],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted((Path(tmp) / IMPORT_PREFIX).iterdir()):
            dst = out_dir / src.name
            shutil.copyfile(src, dst)
            written.append(dst)
        return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROTO_DIR)
    args = parser.parse_args()
    if args.out == PROTO_DIR:
        for old in PROTO_DIR.iterdir():
            if old.name.endswith(GENERATED_SUFFIXES):
                old.unlink()
    for path in generate(args.out):
        print(path.relative_to(REPO) if path.is_relative_to(REPO) else path, file=sys.stderr)


if __name__ == "__main__":
    main()
