"""The services that worker deployments announce, as the catalogue topic last holds them."""

from __future__ import annotations

from pipeline.codec.records import WireCodec
from pipeline.core.model import ServiceDefinition
from pipeline.kafka.config import ClusterConfig
from pipeline.views.compacted import CompactedTopicView, put
from topics import TopicNames


class ServiceCatalogView(CompactedTopicView):
    """Service definitions as worker deployments last announced them."""

    def __init__(self, cluster: ClusterConfig, names: TopicNames, codec: WireCodec) -> None:
        super().__init__(cluster, names.services)
        self._codec = codec
        self._services: dict[str, ServiceDefinition] = {}

    def services(self) -> list[ServiceDefinition]:
        with self._lock:
            services = list(self._services.values())
        return sorted(services, key=lambda service: service.name)

    def service(self, name: str) -> ServiceDefinition | None:
        with self._lock:
            return self._services.get(name)

    def _apply(self, key: str, value: bytes | None) -> None:
        service = None if value is None else self._codec.decode_service(value)
        put(self._lock, self._services, key, service)
