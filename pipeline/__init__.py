"""Durable, flow-controlled invocations on Apache Kafka."""

from pipeline.core.model import RetryPolicy
from pipeline.errors import RateLimited, RetryableError, TerminalError
from pipeline.sdk import Context, Service

__all__ = [
    "Context",
    "RateLimited",
    "RetryPolicy",
    "RetryableError",
    "Service",
    "TerminalError",
]
