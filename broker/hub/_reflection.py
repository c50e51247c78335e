"""gRPC server reflection, v1 and v1alpha, answered by the library's one servicer.

grpcio-reflection implements only ``grpc.reflection.v1alpha`` (grpc/grpc issue 38576 asks for v1),
while current clients (``buf curl``, grpcurl, Postman, gRPC-Java) try ``grpc.reflection.v1`` first.
v1 is the v1alpha schema under a new package: the same messages with the same field numbers. So the
library's servicer is mounted a second time under the v1 service name, with the v1alpha message
classes doing the (identical) wire encoding, and the v1 file, derived from the v1alpha one by
renaming its package, joins the default pool so reflection can describe itself to v1 clients too.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

__all__ = ["V1ALPHA_SERVICE_NAME", "V1_SERVICE_NAME", "enable_reflection"]

V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1_PACKAGE = "grpc.reflection.v1"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_METHOD = "ServerReflectionInfo"


def _add_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    """Idempotent: the v1 reflection schema, as the v1alpha schema under the v1 package."""
    try:
        pool.FindFileByName(_V1_FILE)
    except KeyError:
        pass
    else:
        return
    v1alpha_prefix = f".{reflection_pb2.DESCRIPTOR.package}."
    v1_prefix = f".{_V1_PACKAGE}."
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name, file.package = _V1_FILE, _V1_PACKAGE
    file.ClearField("options")  # language package options name the v1alpha package
    for message in file.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(v1alpha_prefix, v1_prefix, 1)
    for service in file.service:
        for method in service.method:
            method.input_type = method.input_type.replace(v1alpha_prefix, v1_prefix, 1)
            method.output_type = method.output_type.replace(v1alpha_prefix, v1_prefix, 1)
    pool.AddSerializedFile(file.SerializeToString())


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1 and v1alpha on ``server`` for ``service_names`` and for itself."""
    _add_v1_file(descriptor_pool.Default())
    servicer = reflection.aio.ReflectionServicer((*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.method_handlers_generic_handler(
        V1_SERVICE_NAME,
        {
            _METHOD: grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))
