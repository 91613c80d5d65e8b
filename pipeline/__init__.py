"""Durable, flow-controlled invocations on Apache Kafka."""

from pipeline.core.model import RetryPolicy
from pipeline.errors import RetryableError, TerminalError
from pipeline.sdk import Context, Service

__all__ = ["Context", "RetryPolicy", "RetryableError", "Service", "TerminalError"]
