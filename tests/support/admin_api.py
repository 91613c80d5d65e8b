"""The Admin API over the real views on the real broker, as `admin_api.server` wires
them, served in-process; commands and rule writes are recorded instead of sent."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient

from admin_api import create_app
from pipeline.codec.records import WireCodec
from pipeline.runtime.limit_rules import LimitRuleStore
from pipeline.settings import Settings
from pipeline.views.limits import LimitRulesView
from pipeline.views.scheduler_state import SchedulerStateView
from tests.support.limit_rules import RecordingWriter
from tests.unit.test_admin_api import CommandLog, ServiceTable

CATCH_UP_S = 30.0


@contextmanager
def admin_api_over_views(settings: Settings) -> Iterator[TestClient]:
    codec = WireCodec()
    state = SchedulerStateView(settings.cluster, settings.topic_names, codec, settings.state_dir)
    rules = LimitRulesView(settings.cluster, settings.topic_names, codec)
    state.start()
    rules.start()
    try:
        assert state.wait_caught_up(CATCH_UP_S) and rules.wait_caught_up(CATCH_UP_S)
        app = create_app(
            settings,
            invocations=state,
            services=ServiceTable(),
            commands=CommandLog(),
            limits=LimitRuleStore(rules, RecordingWriter()),
        )
        token = settings.admin_api_tokens[0].get_secret_value()
        yield TestClient(app, headers={"Authorization": f"Bearer {token}"})
    finally:
        state.stop()
        rules.stop()
