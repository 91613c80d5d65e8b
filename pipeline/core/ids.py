"""Ids derived from inputs. Their formats are part of the contract: a test pins them.

A derived id makes a repeated input land on the same invocation, which is how
re-delivered records, cron ticks and idempotency keys run at most once.
"""

from __future__ import annotations

from pipeline.core.model import Target


def record_id(topic: str, partition: int, offset: int) -> str:
    """Id of an invocation record that arrived without one (e.g. from kcat)."""
    return f"rec:{topic}:{partition}:{offset}"


def idempotent_id(target: Target, idempotency_key: str) -> str:
    """Two requests with one key to one handler are one invocation."""
    return f"idem:{target}:{idempotency_key}"


def subscription_id(subscription: str, topic: str, partition: int, offset: int) -> str:
    return f"kafka:{subscription}:{topic}:{partition}:{offset}"


def cron_id(schedule: str, tick_ms: int) -> str:
    return f"cron:{schedule}:{tick_ms}"


def sent_id(parent_id: str, index: int) -> str:
    """The invocation a handler sends at journal entry `index`: the same on every replay."""
    return f"{parent_id}:send:{index}"
