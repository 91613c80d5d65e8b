"""The handler SDK: services, handlers and the durable `ctx.run` step. Imports no Kafka."""

from pipeline.sdk.context import Context, JournalWriter
from pipeline.sdk.serde import BytesSerde, JsonSerde, Serde
from pipeline.sdk.service import Handler, Service

__all__ = [
    "BytesSerde",
    "Context",
    "Handler",
    "JournalWriter",
    "JsonSerde",
    "Serde",
    "Service",
]
