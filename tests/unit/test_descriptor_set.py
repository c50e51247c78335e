"""The shipped descriptor set loads on its own, as a client in another language would load it.

``greenchannel/v1/greenchannel.v1.binpb`` is read from the installed package and added, file by
file, to a fresh descriptor pool that has seen nothing else: every import must be inside the set.
"""

from __future__ import annotations

from importlib import resources

import pytest
from buf.validate import validate_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from greenchannel.v1 import (
    bank_pb2,
    bus_pb2,
    carrier_pb2,
    ledger_pb2,
    platform_pb2,
    police_pb2,
    registry_pb2,
)

GENERATED_WITH_SERVICES = (bank_pb2, bus_pb2, carrier_pb2, ledger_pb2, platform_pb2, police_pb2, registry_pb2)


@pytest.fixture(scope="module")
def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    data = resources.files("greenchannel.v1").joinpath("greenchannel.v1.binpb").read_bytes()
    return descriptor_pb2.FileDescriptorSet.FromString(data)


@pytest.fixture(scope="module")
def fresh_pool(descriptor_set: descriptor_pb2.FileDescriptorSet) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_set.file:  # imports come before the files that import them
        pool.Add(file)
    return pool


def test_the_set_holds_the_contract_validate_and_the_well_known_types_it_imports(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> None:
    names = [file.name for file in descriptor_set.file]
    contract = {
        f"greenchannel/v1/{entry.name}"
        for entry in resources.files("greenchannel.v1").iterdir()
        if entry.name.endswith(".proto")
    }
    assert len(contract) >= 14
    assert {n for n in names if n.startswith("greenchannel/")} == contract
    assert "buf/validate/validate.proto" in names
    assert {"google/protobuf/timestamp.proto", "google/protobuf/duration.proto"} <= set(names)
    assert len(names) == len(set(names))
    # Self-contained: every import is in the set, before the file that imports it.
    seen: set[str] = set()
    for file in descriptor_set.file:
        assert set(file.dependency) <= seen, file.name
        seen.add(file.name)
    # Compact and reproducible: no source locations.
    assert all(not file.HasField("source_code_info") for file in descriptor_set.file)


def test_a_fresh_pool_finds_every_service_and_method_the_python_code_serves(
    fresh_pool: descriptor_pool.DescriptorPool,
) -> None:
    for module in GENERATED_WITH_SERVICES:
        for service in module.DESCRIPTOR.services_by_name.values():
            loaded = fresh_pool.FindServiceByName(service.full_name)
            assert [m.name for m in loaded.methods] == [m.name for m in service.methods]
            for loaded_method, method in zip(loaded.methods, service.methods, strict=True):
                assert loaded_method.input_type.full_name == method.input_type.full_name
                assert loaded_method.output_type.full_name == method.output_type.full_name
    assert fresh_pool.FindMethodByName("greenchannel.v1.RegistryService.ListBrokerKeys")


def test_the_contract_files_are_the_ones_the_python_code_was_generated_from(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> None:
    shipped = {file.name: file for file in descriptor_set.file}
    for module in GENERATED_WITH_SERVICES:
        generated = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        # protoc fills json_name in a descriptor set and leaves it out of generated Python; else equal.
        assert _without_json_names(shipped[generated.name]) == generated, generated.name


def _without_json_names(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(file)
    pending = list(copy.message_type)
    while pending:
        message = pending.pop()
        for field in message.field:
            field.ClearField("json_name")
        pending.extend(message.nested_type)
    return copy


def test_the_validation_rules_travel_with_the_set(fresh_pool: descriptor_pool.DescriptorPool) -> None:
    field = fresh_pool.FindMessageTypeByName("greenchannel.v1.GetAgencyRequest").fields_by_name["id"]
    # Read the rules from the serialized options, as a foreign protovalidate would.
    options = descriptor_pb2.FieldOptions.FromString(field.GetOptions().SerializeToString())
    assert options.Extensions[validate_pb2.field].string.pattern == "^[a-z0-9][a-z0-9-]{1,62}$"
    extension = fresh_pool.FindExtensionByName("buf.validate.field")
    assert extension.containing_type is not None
    assert extension.containing_type.full_name == "google.protobuf.FieldOptions"
