"""The scheduler shell: a transactional Kafka loop around `pipeline.core.scheduler`."""

from pipeline.runtime.scheduler.processor import SchedulerProcessor

__all__ = ["SchedulerProcessor"]
