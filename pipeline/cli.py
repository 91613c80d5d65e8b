"""The `pipeline` console script: the one composition root of every process."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import importlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from pipeline.kafka.config import ClusterConfig, Role
from pipeline.localkafka.cli import (
    BOOTSTRAP_ENV,
    DEFAULT_PORT,
    add_kafka_commands,
    default_data_dir,
)
from pipeline.settings import Settings

log = logging.getLogger("pipeline")

EXAMPLE_SERVICE = "pipeline.examples.greeter:service"

_LIMITS_CATCH_UP_S = 30.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline", description="Durable, flow-controlled invocations on Apache Kafka."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_kafka_commands(commands)

    topics = commands.add_parser("topics", help="the topic catalogue")
    topic_commands = topics.add_subparsers(dest="topics_command", required=True)
    topic_commands.add_parser(
        "create", help="create missing topics; check existing ones"
    ).set_defaults(func=_cmd_topics_create)
    topic_commands.add_parser("list", help="print the catalogue").set_defaults(
        func=_cmd_topics_list
    )

    def services_option(p: argparse.ArgumentParser, default: list[str] | None) -> None:
        p.add_argument(
            "--service",
            action="append",
            default=default,
            metavar="MODULE:ATTR",
            help=f"a Service object to run (repeatable; default {EXAMPLE_SERVICE})",
        )

    commands.add_parser("scheduler", help="run a scheduler process").set_defaults(
        func=_cmd_scheduler
    )
    worker = commands.add_parser("worker", help="run a worker with the given services")
    services_option(worker, None)
    worker.set_defaults(func=_cmd_worker)
    commands.add_parser("admin-api", help="run the Admin API").set_defaults(func=_cmd_admin_api)
    run = commands.add_parser("run", help="scheduler + worker + Admin API in one process")
    services_option(run, None)
    run.set_defaults(func=_cmd_run)
    dev = commands.add_parser(
        "dev", help="local broker + topics + scheduler + worker + Admin API, in the foreground"
    )
    services_option(dev, None)
    dev.set_defaults(func=_cmd_dev)

    invoke = commands.add_parser("invoke", help="invoke a handler: Service/handler")
    invoke.add_argument("target", help="Service/handler or Service/key/handler")
    invoke.add_argument("--data", default="null", help="JSON input (default: null)")
    invoke.add_argument("--wait", action="store_true", help="wait for and print the result")
    invoke.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    invoke.add_argument("--idempotency-key")
    invoke.add_argument("--scope")
    invoke.add_argument("--limit-key")
    invoke.add_argument("--priority", type=int, default=5)
    invoke.set_defaults(func=_cmd_invoke)

    invocations = commands.add_parser("invocations", help="act on existing invocations")
    invocation_commands = invocations.add_subparsers(dest="invocations_command", required=True)
    resume = invocation_commands.add_parser(
        "resume",
        help="resume a paused invocation",
        description=(
            "Send a resume command for a paused invocation. The status is not checked "
            "here: the scheduler ignores the command unless the invocation is paused. "
            "The Admin API (POST /invocations/{id}/resume) checks the status first and "
            "finds the partition key itself."
        ),
    )
    resume.add_argument("invocation_id", metavar="ID", help="the id of the paused invocation")
    resume.add_argument(
        "--partition-key",
        metavar="KEY",
        help=(
            "the invocation's partition key: its scope if it has one, else Service/key "
            "for a keyed service, else its id (the default). A wrong key sends the "
            "command where the scheduler does not hold the invocation, and it is ignored"
        ),
    )
    resume.set_defaults(func=_cmd_invocations_resume)

    limits = commands.add_parser("limits", help="the limit rules of virtual queues")
    limit_commands = limits.add_subparsers(dest="limits_command", required=True)
    limit_commands.add_parser(
        "get", help="print the rules in force and their version, as JSON"
    ).set_defaults(func=_cmd_limits_get)
    limits_put = limit_commands.add_parser(
        "put",
        help="add or replace rules by id, all in one change",
        description=(
            'FILE holds {"rules": [{"id", "pattern", "concurrency", "rate", "burst", '
            '"weight", "max_queued", "hold_while_suspended", "paused"}], "if_version"}, '
            "as PUT /limits/rules of the Admin API takes it; - reads standard input. "
            "Prints the new rule set."
        ),
    )
    limits_put.add_argument("file", metavar="FILE.json", help="the rules, or - for stdin")
    limits_put.set_defaults(func=_cmd_limits_put)

    deployments = commands.add_parser(
        "deployments",
        help="caps on running attempts across all workers of a service",
        description=(
            "A deployment is the pool of workers serving one service, named after it. "
            "Its cap holds on top of the queue rules; caps are versioned with them."
        ),
    )
    deployment_commands = deployments.add_subparsers(dest="deployments_command", required=True)
    deployment_commands.add_parser(
        "list", help="print every cap with what runs under it and what waits, as JSON"
    ).set_defaults(func=_cmd_deployments_list)
    deployment_set = deployment_commands.add_parser("set", help="set a deployment's cap")
    deployment_set.add_argument("name", help="the deployment: its service's name")
    deployment_set.add_argument("concurrency", type=int, help="attempts at once; 0 holds all")
    deployment_set.set_defaults(func=_cmd_deployments_set)
    deployment_remove = deployment_commands.add_parser("remove", help="lift a deployment's cap")
    deployment_remove.add_argument("name", help="the deployment: its service's name")
    deployment_remove.set_defaults(func=_cmd_deployments_remove)

    queues = commands.add_parser(
        "queues",
        help="the active virtual queues and what holds them back, as JSON",
        description=(
            "Without a subcommand: list the queues with something queued or running, as "
            "GET /queues of the Admin API does. A service's default queue has no scope; "
            "write it as ~/Service."
        ),
    )
    queues.add_argument("--scope", help="only the queues of this scope (~: default queues)")
    queues.set_defaults(func=_cmd_queues_list)
    queue_commands = queues.add_subparsers(dest="queues_command", metavar="show")
    show = queue_commands.add_parser(
        "show", help="the rule in force, counts and what blocks the head of one queue"
    )
    show.add_argument("queue", metavar="SCOPE/LIMIT_KEY", help="e.g. acme/user-9 or ~/Greeter")
    show.set_defaults(func=_cmd_queues_show)

    results = commands.add_parser("results", help="read the results topic")
    result_commands = results.add_subparsers(dest="results_command", required=True)
    tail = result_commands.add_parser("tail", help="print results as they arrive")
    tail.add_argument("--from-beginning", action="store_true")
    tail.set_defaults(func=_cmd_results_tail)
    get = result_commands.add_parser("get", help="print the result of one invocation")
    get.add_argument("invocation_id")
    get.add_argument("--timeout", type=float, default=10.0)
    get.set_defaults(func=_cmd_results_get)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # `kill -USR1 <pid>` prints every thread's stack: what a process that seems stuck
    # is waiting for.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    from pipeline.errors import PipelineError

    try:
        code: int = args.func(args)
    except PipelineError as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


# -- settings -------------------------------------------------------------------------


def load_settings() -> Settings:
    """Settings from the environment; an empty bootstrap means the local dev broker."""
    settings = Settings()
    if settings.kafka_bootstrap_servers:
        return settings
    from pipeline.localkafka.cluster import running_bootstrap

    # The broker `pipeline kafka start` runs, else the one `pipeline dev` runs.
    bootstrap = running_bootstrap(default_data_dir()) or running_bootstrap(_dev_data_dir())
    if bootstrap is None:
        from pipeline.errors import ValidationError

        raise ValidationError(
            f"no Kafka to talk to: set {BOOTSTRAP_ENV}, or start the local broker with "
            "`pipeline kafka start` (or use `pipeline dev`, which starts one)"
        )
    return settings.model_copy(update={"kafka_bootstrap_servers": bootstrap})


def _dev_data_dir() -> Path:
    return default_data_dir() / "dev"


def _cluster(settings: Settings, role: Role = "cli") -> ClusterConfig:
    """The cluster as `role` sees it, once it let this process in (a wrong password
    fails here with a message, not later with a hang)."""
    from pipeline.kafka.access import check_access

    cluster = settings.cluster.as_role(role)
    check_access(cluster)
    return cluster


def _provision(settings: Settings) -> list[str]:
    """Create the catalogue's missing topics; a topic that disagrees with it is an error
    to fix (`ConflictError`), said as one."""
    from pipeline.errors import ConflictError
    from topics.provision import TopicMismatch, provision

    try:
        return provision(_cluster(settings, "topics").client({}), settings.catalogue)
    except TopicMismatch as exc:
        raise ConflictError(str(exc)) from None


def load_services(specs: list[str] | None) -> list[Any]:
    from pipeline.errors import ValidationError
    from pipeline.sdk import Service

    services: list[Any] = []
    for spec in specs or [EXAMPLE_SERVICE]:
        module_name, _, attr = spec.partition(":")
        if not attr:
            raise ValidationError(f"--service {spec!r}: write MODULE:ATTR, e.g. {EXAMPLE_SERVICE}")
        try:
            value = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValidationError(f"--service {spec!r} cannot be loaded: {exc}") from exc
        if not isinstance(value, Service):
            raise ValidationError(f"--service {spec!r} is a {type(value).__name__}, not a Service")
        services.append(value)
    return services


# -- commands -------------------------------------------------------------------------


def _cmd_topics_create(args: argparse.Namespace) -> int:

    settings = load_settings()
    created = _provision(settings)
    for spec in settings.catalogue.specs():
        print(f"{'created' if spec.name in created else 'exists '} {spec.name}")
    return 0


def _cmd_topics_list(args: argparse.Namespace) -> int:
    for spec in Settings().catalogue.specs():
        configs = ",".join(f"{k}={v}" for k, v in spec.configs.items())
        print(f"{spec.name}\tpartitions={spec.partitions}\trf={spec.replication_factor}\t{configs}")
    return 0


def _cmd_scheduler(args: argparse.Namespace) -> int:
    from pipeline.runtime.scheduler import SchedulerProcessor

    stop = threading.Event()
    _stop_on_signals(stop.set)
    SchedulerProcessor(load_settings()).run(stop)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    settings = load_settings()
    services = load_services(args.service)
    asyncio.run(_run_processes(settings, services, scheduler=False, admin_api=False))
    return 0


def _cmd_admin_api(args: argparse.Namespace) -> int:
    from admin_api.server import serve

    serve(load_settings())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings()
    asyncio.run(_run_processes(settings, load_services(args.service)))
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:

    services = load_services(args.service)
    settings = Settings()
    with ExitStack() as stack:
        if not settings.kafka_bootstrap_servers:
            from pipeline.localkafka.broker import (
                BrokerConfig,
                BrokerError,
                LocalBroker,
                choose_ports,
            )

            try:
                choose_ports("127.0.0.1", [DEFAULT_PORT])
                port: int | None = DEFAULT_PORT
            except BrokerError:
                port = None  # taken, by a `pipeline kafka start` broker say: any free one
            broker = LocalBroker(BrokerConfig(data_dir=_dev_data_dir(), port=port))
            print("starting a local Kafka broker ...", flush=True)
            bootstrap = broker.start()
            stack.callback(broker.stop)
            settings = settings.model_copy(update={"kafka_bootstrap_servers": bootstrap})
        _provision(settings)
        _print_banner(settings, services)
        asyncio.run(_run_processes(settings, services))
    return 0


def _print_banner(settings: Settings, services: list[Any]) -> None:
    base = f"http://{settings.admin_api_host}:{settings.admin_api_port}"
    token = settings.admin_api_tokens[0].get_secret_value() if settings.admin_api_tokens else ""
    handlers = [
        f"{d.name}/{h.name}" for s in services for d in [s.definition()] for h in d.handlers
    ]
    print(
        f"""
pipeline is running.
  Kafka:      {settings.kafka_bootstrap_servers}  (topics under prefix {settings.topic_prefix!r})
  Admin API:  {base}  (docs: {base}/docs, token: {token})
  Handlers:   {", ".join(handlers)}

Invoke the example from another terminal (the CLI finds this broker by itself):
  .venv/bin/pipeline invoke Greeter/greet --data '{{"name": "Ada"}}' --wait
  curl -H 'Authorization: Bearer {token}' {base}/invocations/<id>
Ctrl-C stops everything.
""",
        flush=True,
    )


def _cmd_invoke(args: argparse.Namespace) -> int:
    from pipeline.client import Client, InvocationFailed
    from pipeline.errors import ValidationError

    try:
        payload = json.loads(args.data)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f'--data is not valid JSON ({exc}): e.g. --data \'{{"name": "Ada"}}\''
        ) from exc
    options: dict[str, Any] = {
        "idempotency_key": args.idempotency_key,
        "scope": args.scope,
        "limit_key": args.limit_key,
        "priority": args.priority,
    }
    with Client(load_settings()) as client:
        if not args.wait:
            print(client.send(args.target, payload, **options))
            return 0
        request = client.request(args.target, payload, **options)
        try:
            output = client.call(
                request.target, payload, timeout_s=args.timeout, invocation_id=request.id, **options
            )
        except InvocationFailed as exc:
            print(_result_json(exc.result), file=sys.stderr)
            return 1
        print(json.dumps(output))
    return 0


def _cmd_invocations_resume(args: argparse.Namespace) -> int:
    from pipeline.codec.records import WireCodec
    from pipeline.operations.models import ResumeResponse
    from pipeline.runtime.commands import InvocationCommandProducer

    settings = load_settings()
    producer = InvocationCommandProducer(
        _cluster(settings),
        settings.topic_names,
        settings.runtime_partitions,
        WireCodec(),
    )
    try:
        producer.resume_id(args.invocation_id, args.partition_key or args.invocation_id)
    finally:
        producer.close()
    _print_model(ResumeResponse(invocation_id=args.invocation_id))
    return 0


def _cmd_limits_get(args: argparse.Namespace) -> int:
    with _operations(load_settings(), state=False) as ops:
        _print_model(ops.rules())
    return 0


def _cmd_limits_put(args: argparse.Namespace) -> int:
    from pipeline.errors import ValidationError
    from pipeline.operations.models import LimitRulesPut, parse_body

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"cannot read the rules from {args.file}: {exc}") from exc
    body = parse_body(LimitRulesPut, text, f"the rules in {args.file}")
    with _operations(load_settings(), state=False) as ops:
        _print_model(ops.put_rules(body))
    return 0


def _cmd_deployments_set(args: argparse.Namespace) -> int:
    from pipeline.operations.models import DeploymentLimitPut, parse_body

    body = parse_body(DeploymentLimitPut, {"concurrency": args.concurrency}, "the cap")
    with _operations(load_settings()) as ops:
        _print_model(ops.put_deployment(args.name, body))
    return 0


def _cmd_deployments_remove(args: argparse.Namespace) -> int:
    with _operations(load_settings()) as ops:
        _print_model(ops.delete_deployment(args.name))
    return 0


def _cmd_deployments_list(args: argparse.Namespace) -> int:
    with _operations(load_settings()) as ops:
        _print_model(ops.deployment_list())
    return 0


def _cmd_queues_list(args: argparse.Namespace) -> int:
    with _operations(load_settings()) as ops:
        _print_model(ops.queue_list(args.scope))
    return 0


def _cmd_queues_show(args: argparse.Namespace) -> int:
    scope, _, limit_key = args.queue.partition("/")
    with _operations(load_settings()) as ops:
        _print_model(ops.queue(scope, limit_key))
    return 0


def _print_model(model: Any) -> None:
    """What the Admin API would answer, as the same JSON."""
    print(json.dumps(model.model_dump(mode="json"), indent=2))


@contextmanager
def _operations(settings: Settings, *, state: bool = True) -> Iterator[Any]:
    """The operations of the Admin API over this process's own readers, each read to
    its end: the limit rules always, the scheduler's state and the services when
    `state` (a private replica of the changelog, deleted on exit)."""
    from pipeline.codec.records import WireCodec
    from pipeline.errors import RetryableError
    from pipeline.operations.operations import Operations
    from pipeline.runtime.limit_rules import LimitRuleReader, LimitRuleStore, LimitRuleWriter
    from pipeline.views.catalog import ServiceCatalogView
    from pipeline.views.scheduler_state import SchedulerStateView

    cluster, names, codec = _cluster(settings), settings.topic_names, WireCodec()
    with ExitStack() as stack:
        reader = LimitRuleReader(cluster, names.limits, codec)
        stack.callback(reader.close)
        writer = LimitRuleWriter(cluster, names.limits, codec)
        stack.callback(writer.close)
        views: list[Any] = []
        if state:
            views = [
                SchedulerStateView(cluster, names, codec, settings.state_dir),
                ServiceCatalogView(cluster, names, codec),
            ]
            for view in views:
                view.start()
                stack.callback(view.stop)
        reader.catch_up(_LIMITS_CATCH_UP_S)
        for view in views:
            if not view.wait_caught_up(_LIMITS_CATCH_UP_S):
                raise RetryableError(
                    f"{view.topic} was not read to its end within {_LIMITS_CATCH_UP_S:.0f}s: "
                    "check the broker and retry"
                )
        yield Operations(
            LimitRuleStore(reader, writer),
            invocations_port=views[0] if views else None,
            services_port=views[1] if views else None,
        )


def _cmd_results_tail(args: argparse.Namespace) -> int:
    from pipeline.client import Client

    with Client(load_settings()) as client:
        for result in client.tail_results(from_beginning=args.from_beginning):
            print(_result_json(result), flush=True)
    return 0


def _cmd_results_get(args: argparse.Namespace) -> int:
    from pipeline.client import Client

    with Client(load_settings()) as client:
        print(_result_json(client.result(args.invocation_id, timeout_s=args.timeout)))
    return 0


def _result_json(result: Any) -> str:
    output: Any = None
    if result.output is not None:
        try:
            output = json.loads(result.output)
        except ValueError:
            output = result.output.hex()
    failure = result.failure
    return json.dumps(
        {
            "invocation_id": result.invocation_id,
            "target": str(result.target),
            "status": result.status.value,
            "output": output,
            "error": None
            if failure is None
            else {"type": failure.error_type, "message": failure.message, "code": failure.code},
            "attempts": result.attempts,
            "latency_ms": result.completed_at_ms - result.created_at_ms,
        }
    )


# -- processes ------------------------------------------------------------------------


async def _run_processes(
    settings: Settings, services: list[Any], *, scheduler: bool = True, admin_api: bool = True
) -> None:
    """Run the chosen processes until SIGINT/SIGTERM; stop them all if one fails."""
    from pipeline.errors import ValidationError
    from pipeline.runtime.tracing import tracer_provider_from_settings
    from pipeline.runtime.worker import Worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tracer_provider = tracer_provider_from_settings(settings)
    tasks: list[asyncio.Task[None]] = []
    scheduler_stop = threading.Event()
    if scheduler:
        from pipeline.runtime.scheduler import SchedulerProcessor

        processor = SchedulerProcessor(settings)
        tasks.append(asyncio.create_task(asyncio.to_thread(processor.run, scheduler_stop)))
    if services:
        worker = Worker(settings, services, tracer_provider=tracer_provider)
        tasks.append(asyncio.create_task(worker.run(stop)))
    if admin_api:
        from admin_api.server import serve_async

        tasks.append(asyncio.create_task(serve_async(settings, stop)))
    waiter = asyncio.create_task(stop.wait())
    failure: BaseException | None = None
    try:
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and task.exception() is not None:
                failure = task.exception()
                if not isinstance(failure, ValidationError):
                    log.error("a process failed; stopping the others", exc_info=failure)
    finally:
        stop.set()
        scheduler_stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        tracer_provider.shutdown()
    if isinstance(failure, ValidationError):
        raise failure  # a setting to fix (a wrong password): said once, plainly, by `main`
    if failure is not None:
        # A non-zero exit, so that a supervisor (systemd, Kubernetes) restarts us.
        raise SystemExit(1)


def _stop_on_signals(callback: Any) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: callback())


if __name__ == "__main__":
    raise SystemExit(main())
