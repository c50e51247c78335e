"""Generate, check and lint the wire contract, offline.

    python proto/generate.py                         regenerate the committed Python beside the .proto files,
                                                     and greenchannel/v1/greenchannel.v1.binpb
    python proto/generate.py --check                 fail if regenerating would change a committed file
    python proto/generate.py --lint                  buf lint (STANDARD rules) on the contract
    python proto/generate.py --breaking-against REF  buf breaking against the contract at git REF

Why not plain `buf generate` / `buf lint` on the sources: the contract imports
`buf/validate/validate.proto`, which lives in the Buf registry, out of reach here, and no package
ships it as source. The protovalidate wheel does carry its compiled descriptor, so we build a
FileDescriptorSet from the installed wheel and hand it to protoc (`--descriptor_set_in`), and give
buf compiled images instead of sources. Nothing third-party is copied by hand into the repository.

For clients in other languages the same build writes `greenchannel/v1/greenchannel.v1.binpb`: one
self-contained FileDescriptorSet with every greenchannel/v1 file, buf/validate/validate.proto and the
google/protobuf files they import, so a foreign loader needs nothing else. No source info, so its
bytes depend only on the contract and the pinned tools; `--check` fails if it drifts, like the code.
"""

from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
PACKAGE_DIR = Path("greenchannel") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
DESCRIPTOR_SET = "greenchannel.v1.binpb"
"""The self-contained FileDescriptorSet beside the generated code, for loaders in other languages."""
BIN = Path(sys.executable).parent


def _validate_descriptor_set(out: Path) -> Path:
    """buf/validate/validate.proto and its imports as a FileDescriptorSet, from installed packages.

    The google/protobuf files are compiled from the sources grpcio-tools bundles (pinned in the dev
    extra) rather than copied from the protobuf runtime (a version range), so the shipped descriptor
    set stays byte-for-byte reproducible from a fresh clone.
    """
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc
    from protovalidate._gen.buf.validate import validate_pb

    validate = descriptor_pb2.FileDescriptorProto.FromString(validate_pb.desc().proto.to_binary())
    wkt = out.with_suffix(".wkt.binpb")
    include = Path(protoc.__file__).parent / "_proto"
    argv = [
        "protoc",
        f"-I{include}",
        "--include_imports",
        f"--descriptor_set_out={wkt}",
        *validate.dependency,
    ]
    if protoc.main(argv) != 0:
        raise SystemExit(f"protoc failed on {', '.join(validate.dependency)}")
    fds = descriptor_pb2.FileDescriptorSet.FromString(wkt.read_bytes())
    fds.file.append(validate)
    out.write_bytes(fds.SerializeToString())
    return out


def _sources(proto_root: Path, *, services_only: bool = False) -> list[str]:
    files = sorted((proto_root / PACKAGE_DIR).glob("*.proto"))
    if services_only:
        files = [f for f in files if "\nservice " in f.read_text(encoding="utf-8")]
    return [str(f.relative_to(proto_root)) for f in files]


def _protoc(args: list[str], *, proto_root: Path, scratch: Path, services_only: bool = False) -> None:
    from grpc_tools import protoc

    deps = scratch / "validate-deps.binpb"
    if not deps.exists():
        _validate_descriptor_set(deps)
    sources = _sources(proto_root, services_only=services_only)
    argv = ["protoc", f"--descriptor_set_in={deps}", f"-I{proto_root}", *args, *sources]
    if protoc.main(argv) != 0:
        raise SystemExit(f"protoc failed on {proto_root}")


def _generate(out_dir: Path, scratch: Path) -> None:
    # Everything a foreign loader needs, imports first (protoc orders the set topologically).
    (out_dir / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    _protoc(
        ["--include_imports", f"--descriptor_set_out={out_dir / PACKAGE_DIR / DESCRIPTOR_SET}"],
        proto_root=ROOT,
        scratch=scratch,
    )
    _protoc(
        [
            f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
            f"--python_out={out_dir}",
            f"--mypy_out={out_dir}",
        ],
        proto_root=ROOT,
        scratch=scratch,
    )
    # Stubs only for files that declare services, rather than an empty *_pb2_grpc.py for every file.
    _protoc(
        [
            f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
            f"--grpc_python_out={out_dir}",
            f"--mypy_grpc_out={out_dir}",
        ],
        proto_root=ROOT,
        scratch=scratch,
        services_only=True,
    )


def _image(proto_root: Path, out: Path, scratch: Path) -> Path:
    _protoc(
        ["--include_imports", "--include_source_info", f"--descriptor_set_out={out}"],
        proto_root=proto_root,
        scratch=scratch,
    )
    return out


def _buf(*args: str) -> int:
    return subprocess.call([str(BIN / "buf"), *args], cwd=REPO)


def _generated_files(directory: Path) -> set[str]:
    return {
        p.name for p in directory.iterdir() if p.name.endswith(GENERATED_SUFFIXES) or p.name == DESCRIPTOR_SET
    }


def generate() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        _generate(ROOT, Path(scratch))
    print(f"generated {len(_generated_files(ROOT / PACKAGE_DIR))} files in {ROOT / PACKAGE_DIR}")
    return 0


def check() -> int:
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        fresh = scratch / "out"
        fresh.mkdir()
        _generate(fresh, scratch)
        committed_dir, fresh_dir = ROOT / PACKAGE_DIR, fresh / PACKAGE_DIR
        committed, regenerated = _generated_files(committed_dir), _generated_files(fresh_dir)
        drift = sorted(committed ^ regenerated)
        drift += sorted(
            name
            for name in committed & regenerated
            if not filecmp.cmp(committed_dir / name, fresh_dir / name, shallow=False)
        )
    if drift:
        print("generated code is out of date; run `make proto` and commit:", *drift, sep="\n  ")
        return 1
    print("generated code matches the contract")
    return 0


def lint() -> int:
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        image = _image(ROOT, scratch / "current.binpb", scratch)
        # --path keeps the lint to our files; the image also holds the imported third-party files.
        rc = _buf("lint", str(image), "--config", str(REPO / "buf.yaml"), "--path", "greenchannel")
    print("buf lint: ok" if rc == 0 else "buf lint: failed")
    return rc


def breaking(ref: str) -> int:
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        baseline_root = scratch / "baseline"
        baseline_root.mkdir()
        archive = subprocess.run(
            ["git", "archive", "--format=tar", ref, "proto"], cwd=REPO, capture_output=True, check=False
        )
        if archive.returncode != 0:
            print(f"buf breaking: no contract at {ref!r} to compare against; skipped")
            return 0
        subprocess.run(["tar", "-x", "-C", str(baseline_root)], input=archive.stdout, check=True)
        baseline_proto = baseline_root / "proto"
        if not any((baseline_proto / PACKAGE_DIR).glob("*.proto")):
            print(f"buf breaking: no contract at {ref!r} to compare against; skipped")
            return 0
        current = _image(ROOT, scratch / "current.binpb", scratch)
        baseline = _image(baseline_proto, scratch / "baseline.binpb", scratch)
        rc = _buf(
            "breaking",
            str(current),
            "--against",
            str(baseline),
            "--config",
            str(REPO / "buf.yaml"),
            "--path",
            "greenchannel",
        )
    print(f"buf breaking against {ref}: " + ("ok" if rc == 0 else "BREAKING CHANGES"))
    return rc


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail if generated code is out of date")
    mode.add_argument("--lint", action="store_true", help="buf lint the contract")
    mode.add_argument("--breaking-against", metavar="REF", help="buf breaking against git REF")
    args = parser.parse_args()
    if args.check:
        return check()
    if args.lint:
        return lint()
    if args.breaking_against:
        return breaking(args.breaking_against)
    return generate()


if __name__ == "__main__":
    sys.exit(main())
