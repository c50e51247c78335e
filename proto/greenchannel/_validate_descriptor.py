"""Make ``buf.validate.validate_pb2`` importable for the generated contract.

Our generated modules import ``buf.validate.validate_pb2`` because the contract carries
protovalidate annotations. protovalidate (>= 2) ships that schema only as a compiled descriptor
inside its own, differently-named generated module, and the Buf registry that would give us the
source is out of reach. So we register the descriptor the installed wheel carries in protobuf's
default pool and expose it under the import path the generated code expects. The schema therefore
always matches the validator that enforces it, and no third-party schema is copied into the repo.
"""

from __future__ import annotations

import sys
import types

# The validate schema imports these; they must be in the pool before it.
from google.protobuf import descriptor_pb2 as _descriptor_pb2  # noqa: F401
from google.protobuf import descriptor_pool
from google.protobuf import duration_pb2 as _duration_pb2  # noqa: F401
from google.protobuf import field_mask_pb2 as _field_mask_pb2  # noqa: F401
from google.protobuf import timestamp_pb2 as _timestamp_pb2  # noqa: F401
from google.protobuf.internal import builder

__all__ = ["install"]

_MODULE = "buf.validate.validate_pb2"
_FILE = "buf/validate/validate.proto"


def install() -> None:
    """Idempotent: registers the descriptor once and reuses an existing module if one is importable."""
    if _MODULE in sys.modules:
        return
    pool = descriptor_pool.Default()
    try:
        file_descriptor = pool.FindFileByName(_FILE)
    except KeyError:
        from protovalidate._gen.buf.validate import validate_pb

        file_descriptor = pool.AddSerializedFile(validate_pb.desc().proto.to_binary())
    module = types.ModuleType(_MODULE)
    module.DESCRIPTOR = file_descriptor  # type: ignore[attr-defined]
    builder.BuildMessageAndEnumDescriptors(file_descriptor, module.__dict__)
    builder.BuildTopDescriptorsAndMessages(file_descriptor, _MODULE, module.__dict__)
    for parent in ("buf", "buf.validate"):
        sys.modules.setdefault(parent, types.ModuleType(parent))
    sys.modules["buf.validate"].validate_pb2 = module  # type: ignore[attr-defined]
    sys.modules[_MODULE] = module
