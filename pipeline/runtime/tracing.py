"""OpenTelemetry wiring: a tracer provider built from settings, W3C context in headers.

Nothing here touches the global tracer provider or propagator: processes take the
provider they are given, so tests and embedders decide where spans go.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.context import Context as TraceContext
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pipeline.settings import Settings

_PROPAGATOR = TraceContextTextMapPropagator()
# Header names the propagator owns; stale values are replaced on inject.
TRACE_HEADERS = frozenset(_PROPAGATOR.fields)


def tracer_provider_from_settings(
    settings: Settings, *, service_name: str = "pipeline"
) -> TracerProvider:
    """A provider exporting as `settings.tracing_exporter` says; the caller shuts it down."""
    # With nowhere to export, spans are not recorded at all (a recorded span costs about
    # 100 us on the worker's hot path); trace context still propagates through headers.
    sampler = ALWAYS_OFF if settings.tracing_exporter == "none" else ParentBased(ALWAYS_ON)
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}), sampler=sampler
    )
    exporter: SpanExporter | None
    if settings.tracing_exporter == "console":
        exporter = ConsoleSpanExporter()
    elif settings.tracing_exporter == "otlp":
        # Imported here: the OTLP exporter pulls in protobuf and requests, which a
        # process that does not export over OTLP should not pay for.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
    else:
        exporter = None
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def extract_context(headers: Iterable[tuple[str, bytes]]) -> TraceContext:
    """The trace context carried in Kafka headers (empty when there is none or it is bad)."""
    carrier: dict[str, str] = {}
    for name, value in headers:
        if name in TRACE_HEADERS and value is not None:
            carrier[name] = value.decode("latin-1")
    return _PROPAGATOR.extract(carrier, context=TraceContext())


def inject_headers(
    headers: Iterable[tuple[str, bytes]] = (), *, context: TraceContext | None = None
) -> list[tuple[str, bytes]]:
    """`headers` with the trace context of `context` (default: the current one) put in.

    Trace headers already in `headers` are dropped first so that a forwarded record
    never carries two parents.
    """
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    kept = [(name, value) for name, value in headers if name not in TRACE_HEADERS]
    return kept + [(name, value.encode("latin-1")) for name, value in carrier.items()]
