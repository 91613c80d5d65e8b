"""Derived ids are a contract: changing a format re-runs work that already ran."""

from __future__ import annotations

from pipeline.core import ids
from pipeline.core.model import Target


def test_record_id() -> None:
    assert ids.record_id("pipeline.invocations", 3, 42) == "rec:pipeline.invocations:3:42"


def test_idempotent_id_unkeyed_target() -> None:
    assert (
        ids.idempotent_id(Target("Billing", "charge"), "order-7") == "idem:Billing/charge:order-7"
    )


def test_idempotent_id_keyed_target_includes_the_key() -> None:
    target = Target("Cart", "checkout", key="user-1")
    assert ids.idempotent_id(target, "k") == "idem:Cart/user-1/checkout:k"


def test_subscription_id() -> None:
    assert ids.subscription_id("orders-sub", "orders", 0, 17) == "kafka:orders-sub:orders:0:17"


def test_cron_id() -> None:
    assert ids.cron_id("nightly", 1_700_000_000_000) == "cron:nightly:1700000000000"


def test_sent_id() -> None:
    assert ids.sent_id("inv-1", 3) == "inv-1:send:3"


def test_every_function_of_the_module_is_pinned() -> None:
    public = {
        name
        for name, value in vars(ids).items()
        if callable(value) and not name.startswith("_") and value.__module__ == ids.__name__
    }
    assert public == {"record_id", "idempotent_id", "subscription_id", "cron_id", "sent_id"}
