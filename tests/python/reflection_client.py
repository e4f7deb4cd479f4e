#!/usr/bin/env python3
"""A foreign gRPC client, as a new interface engine team would write one in Python: grpcio
and grpcio-reflection's ProtoReflectionDescriptorDatabase, no generated code. It discovers
the bridge's API through server reflection (grpcio-reflection speaks
`grpc.reflection.v1alpha`), builds every message from the descriptors it was given, and
calls GetOrder, SubmitOru and grpc.health.v1 Check and Watch.

    python reflection_client.py HOST:PORT TOKEN DOMAIN APPOINTMENT_ID ORU_FILE

Prints one JSON object with what it found; the Rust test judges it. Exits non-zero only
when it could not run at all.
"""

import json
import sys

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


class Api:
    """Calls methods known only by name, through descriptors fetched by reflection."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.db = ProtoReflectionDescriptorDatabase(channel)
        self.pool = DescriptorPool(self.db)

    def method(self, service: str, name: str):
        m = self.pool.FindServiceByName(service).methods_by_name[name]
        return m, GetMessageClass(m.input_type), GetMessageClass(m.output_type)

    def enum_value(self, enum: str, name: str) -> int:
        return self.pool.FindEnumTypeByName(enum).values_by_name[name].number

    def unary(self, service: str, name: str, fields: dict, token: str | None = None):
        m, request, response = self.method(service, name)
        call = self.channel.unary_unary(
            f"/{service}/{name}",
            request_serializer=request.SerializeToString,
            response_deserializer=response.FromString,
        )
        metadata = [("authorization", f"Bearer {token}")] if token else None
        return call(request(**fields), metadata=metadata, timeout=30)

    def server_stream(self, service: str, name: str, fields: dict):
        m, request, response = self.method(service, name)
        call = self.channel.unary_stream(
            f"/{service}/{name}",
            request_serializer=request.SerializeToString,
            response_deserializer=response.FromString,
        )
        return call(request(**fields), timeout=30)


def as_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def main() -> None:
    target, token, domain, appointment, oru_file = sys.argv[1:6]
    found: dict = {}
    with grpc.insecure_channel(target) as channel:
        api = Api(channel)
        found["services"] = sorted(api.db.get_services())

        formats = [
            api.enum_value("qubs_bridge.v1.OutputFormat", "OUTPUT_FORMAT_HL7_ORM_O01"),
            api.enum_value("qubs_bridge.v1.OutputFormat", "OUTPUT_FORMAT_FHIR_SERVICE_REQUEST"),
        ]
        order = api.unary(
            "qubs_bridge.v1.OrderService",
            "GetOrder",
            {"domain": domain, "appointment_id": appointment, "formats": formats},
            token,
        )
        found["get_order"] = as_dict(order)

        try:
            api.unary(
                "qubs_bridge.v1.OrderService",
                "GetOrder",
                {"domain": domain, "appointment_id": appointment},
            )
            found["get_order_without_token"] = "OK"
        except grpc.RpcError as e:
            found["get_order_without_token"] = e.code().name

        with open(oru_file, "rb") as f:
            message = f.read()
        answer = api.unary(
            "qubs_bridge.v1.ResultService",
            "SubmitOru",
            {"message": message, "domain": domain},
            token,
        )
        found["submit_oru"] = {
            "ack_code": answer.ack_code,
            "ack": answer.ack.decode(),
            "reports": [as_dict(r) for r in answer.reports],
        }

        check = api.unary("grpc.health.v1.Health", "Check", {"service": ""})
        found["health_check"] = as_dict(check).get("status")
        watch = api.server_stream(
            "grpc.health.v1.Health", "Watch", {"service": "qubs_bridge.v1.OrderService"}
        )
        found["health_watch_first"] = as_dict(next(watch)).get("status")
        watch.cancel()
    json.dump(found, sys.stdout)
    print()


if __name__ == "__main__":
    main()
