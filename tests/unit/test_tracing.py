"""W3C trace context through Kafka headers, and tracer providers built from settings."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipeline.runtime.tracing import extract_context, inject_headers, tracer_provider_from_settings
from pipeline.settings import Settings

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_extract_reads_the_parent_from_headers() -> None:
    context = extract_context([("x-other", b"1"), ("traceparent", TRACEPARENT)])
    parent = trace.get_current_span(context).get_span_context()
    assert f"{parent.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert f"{parent.span_id:016x}" == "00f067aa0ba902b7"
    assert parent.is_remote


def test_extract_without_trace_headers_gives_no_parent() -> None:
    context = extract_context([("traceparent", b"garbage")])
    assert not trace.get_current_span(context).get_span_context().is_valid


def test_inject_replaces_stale_trace_headers_and_keeps_the_rest() -> None:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("send") as span:
        headers = inject_headers([("traceparent", TRACEPARENT), ("x-user", b"ada")])
    assert ("x-user", b"ada") in headers
    traceparents = [value for name, value in headers if name == "traceparent"]
    assert len(traceparents) == 1
    context = extract_context(headers)
    assert trace.get_current_span(context).get_span_context().span_id == (
        span.get_span_context().span_id
    )


def test_inject_outside_any_span_adds_nothing() -> None:
    assert inject_headers([("x-user", b"ada")]) == [("x-user", b"ada")]


def test_providers_follow_the_exporter_setting() -> None:
    # No span is ended under "otlp": exporting it would wait on a collector that is not there.
    for exporter in ("none", "console", "otlp"):
        provider = tracer_provider_from_settings(Settings(tracing_exporter=exporter))
        try:
            span = provider.get_tracer("test").start_span("probe")
            assert span.get_span_context().is_valid
            if exporter != "otlp":
                span.end()
        finally:
            provider.shutdown()
