"""Run the Admin API: start the views it reads and the producers it sends commands and
limit rules with, serve it with uvicorn, then stop the views and close the producers.

`serve` owns the process and stops on SIGINT/SIGTERM. `serve_async` runs inside a host
asyncio program such as `pipeline dev`, which owns the signals and says when to stop
through an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Generator
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from admin_api.app import create_app
from pipeline.codec.records import WireCodec
from pipeline.errors import PipelineError
from pipeline.kafka.access import check_access
from pipeline.runtime.commands import InvocationCommandProducer
from pipeline.runtime.limit_rules import LimitRuleStore, LimitRuleWriter
from pipeline.settings import Settings
from pipeline.views.catalog import ServiceCatalogView
from pipeline.views.limits import LimitRulesView
from pipeline.views.scheduler_state import SchedulerStateView

log = logging.getLogger(__name__)

DEFAULT_CATCH_UP_TIMEOUT_S = 30.0

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class AdminApiStartupError(PipelineError):
    """The Admin API could not start serving, e.g. its port is taken."""


@dataclass(frozen=True, slots=True)
class _Adapters:
    """What the app's ports are bound to; the server owns their lifetime."""

    state: SchedulerStateView
    services: ServiceCatalogView
    commands: InvocationCommandProducer
    rules: LimitRulesView
    rule_writer: LimitRuleWriter

    def stop(self) -> None:
        self.state.stop()
        self.services.stop()
        self.rules.stop()
        self.commands.close()
        self.rule_writer.close()


def serve(settings: Settings, *, catch_up_timeout_s: float = DEFAULT_CATCH_UP_TIMEOUT_S) -> None:
    """Serve the Admin API until SIGINT or SIGTERM, then stop its adapters and return."""
    asyncio.run(_serve_until_signalled(settings, catch_up_timeout_s))


async def _serve_until_signalled(settings: Settings, catch_up_timeout_s: float) -> None:
    # Our handlers rather than uvicorn's: uvicorn re-raises the signal after shutting
    # down, which would end the process before the views are stopped.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        await serve_async(settings, stop, catch_up_timeout_s=catch_up_timeout_s)
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)


async def serve_async(
    settings: Settings,
    stop: asyncio.Event,
    *,
    catch_up_timeout_s: float = DEFAULT_CATCH_UP_TIMEOUT_S,
) -> None:
    """Serve the Admin API until `stop` is set; the host program owns the signals."""
    adapters = await asyncio.to_thread(_start_adapters, settings, catch_up_timeout_s)
    try:
        server = _EmbeddedServer(_uvicorn_config(_app(settings, adapters), settings))
        watcher = asyncio.create_task(_exit_when_set(server, stop), name="admin-api-stop")
        try:
            # Awaited here, not in a task: uvicorn's SystemExit on a failed start must be
            # caught in this coroutine, or it would stop the host's event loop.
            await server.serve()
        except SystemExit as exc:
            raise _startup_failed(settings) from exc
        except asyncio.CancelledError:
            if server.started:
                await server.shutdown()
            raise
        finally:
            watcher.cancel()
    finally:
        await asyncio.to_thread(adapters.stop)


async def _exit_when_set(server: uvicorn.Server, stop: asyncio.Event) -> None:
    await stop.wait()
    server.should_exit = True


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the host program."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _start_adapters(settings: Settings, catch_up_timeout_s: float) -> _Adapters:
    cluster = settings.cluster.as_role("admin")
    check_access(cluster)
    names, codec = settings.topic_names, WireCodec()
    state = SchedulerStateView(cluster, names, codec, settings.state_dir, settings.instance_id)
    services = ServiceCatalogView(cluster, names, codec)
    rules = LimitRulesView(cluster, names, codec)
    with contextlib.ExitStack() as undo_on_failure:
        commands = InvocationCommandProducer(cluster, names, settings.runtime_partitions, codec)
        undo_on_failure.callback(commands.close)
        rule_writer = LimitRuleWriter(cluster, names.limits, codec)
        undo_on_failure.callback(rule_writer.close)
        state.start()
        undo_on_failure.callback(state.stop)
        services.start()
        undo_on_failure.callback(services.stop)
        rules.start()
        undo_on_failure.pop_all()
    adapters = _Adapters(state, services, commands, rules, rule_writer)
    deadline = time.monotonic() + catch_up_timeout_s
    for view in (state, services, rules):
        # Serving a little stale beats not serving: the view keeps catching up.
        if not view.wait_caught_up(max(0.0, deadline - time.monotonic())):
            log.warning(
                "view of %s is not caught up after %.0fs; serving what it has read so far",
                view.topic,
                catch_up_timeout_s,
            )
    return adapters


def _app(settings: Settings, adapters: _Adapters) -> FastAPI:
    return create_app(
        settings,
        invocations=adapters.state,
        services=adapters.services,
        commands=adapters.commands,
        limits=LimitRuleStore(adapters.rules, adapters.rule_writer),
    )


def _uvicorn_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.admin_api_host,
        port=settings.admin_api_port,
        log_level="info",
        # A request line with the longest ids, percent-encoded, exceeds h11's default
        # 16 KiB: it would be refused as text/plain before the app could answer.
        h11_max_incomplete_event_size=64 * 1024,
    )


def _startup_failed(settings: Settings) -> AdminApiStartupError:
    # uvicorn logs the cause (usually a taken port) and exits; keep the host alive.
    return AdminApiStartupError(
        f"the Admin API could not listen on {settings.admin_api_host}:{settings.admin_api_port}"
        ": see the log above; free the port or set PIPELINE_ADMIN_API_PORT"
    )
