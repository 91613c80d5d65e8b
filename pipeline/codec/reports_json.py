"""Queue reports as JSON, for the CLI: the same fields as the Admin API's `/queues`.

The Admin API renders the same reports with pydantic at its edge; the CLI, inside
`pipeline`, renders them here by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pipeline.core.introspection import QueueReport, explain, queue_address


def queue_summary_to_json(report: QueueReport) -> dict[str, Any]:
    """One entry of GET /queues."""
    return {
        "queue_id": str(report.queue_id),
        "scope": report.queue_id.scope or None,
        "limit_key": report.queue_id.limit_key,
        "path": f"/queues/{queue_address(report.queue_id)}",
        "queued": report.queued,
        "running": report.running,
        "rule_pattern": report.rule_pattern,
    }


def queue_report_to_json(report: QueueReport) -> dict[str, Any]:
    """GET /queues/{scope}/{limitKey}."""
    rule = None
    if report.rule_id is not None:
        rule = {
            "id": report.rule_id,
            "pattern": report.rule_pattern,
            "concurrency": report.concurrency,
            "rate": report.rate_per_s,
            "burst": report.burst,
            "paused": report.paused,
            "max_queued": report.max_queued,
        }
    return {
        "queue_id": str(report.queue_id),
        "scope": report.queue_id.scope or None,
        "limit_key": report.queue_id.limit_key,
        "rule": rule,
        "running": report.running,
        "queued": report.queued,
        "awaiting_capacity": report.awaiting_capacity,
        "head_blocker": None if report.head_blocker is None else report.head_blocker.value,
        "head_blocker_level": (
            None if report.head_blocker_level is None else report.head_blocker_level.value
        ),
        "scope_budget": _scope_budget(report),
        "blocked_until": _instant(report.blocked_until_ms),
        "next_eligible": _instant(report.next_eligible_ms),
        "decided_at": _instant(report.decided_at_ms),
        "explanation": explain(report),
    }


def _scope_budget(report: QueueReport) -> dict[str, Any] | None:
    budget = report.scope_budget
    if budget is None:
        return None
    return {
        "rule_id": budget.rule_id,
        "concurrency": budget.concurrency,
        "rate": budget.rate_per_s,
        "burst": budget.burst,
        "paused": budget.paused,
        "running": budget.running,
        "queued": budget.queued,
    }


def _instant(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
