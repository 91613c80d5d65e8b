"""`pipeline kafka start|stop|status`: a background development broker or cluster.

`start --brokers N` (N > 1) runs an N-node KRaft cluster in <data-dir>/node-<id>
(cluster.py); `stop` and `status` handle whichever runs in the data dir.

Each subcommand sets `func` (Namespace -> exit code) via set_defaults; the top-level
CLI is expected to call `args.func(args)`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.localkafka.jars import JarsError, repo_root

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
DEFAULT_PORT = 9092
# LSB convention for "program is not running", so scripts can branch on status.
EXIT_STOPPED = 3


def default_data_dir() -> Path:
    root = repo_root()
    if root is not None:
        return root / "var" / "kafka"
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "pipeline" / "kafka"


def add_kafka_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    kafka = subparsers.add_parser("kafka", help="run a local Kafka broker or cluster")
    commands = kafka.add_subparsers(dest="kafka_command", required=True, metavar="COMMAND")

    def data_dir_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--data-dir",
            type=Path,
            default=default_data_dir(),
            help="broker data dir (default: %(default)s)",
        )

    start = commands.add_parser("start", help="start the broker in the background")
    start.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="client port; node i of a cluster gets port + i - 1 (default: %(default)s)",
    )
    start.add_argument(
        "--brokers",
        type=int,
        default=1,
        help="number of brokers; more than 1 runs a KRaft cluster of combined "
        "broker + controller nodes, replication factor 3 (default: %(default)s)",
    )
    data_dir_option(start)
    start.set_defaults(func=_cmd_start)

    stop = commands.add_parser("stop", help="stop the background broker or cluster")
    data_dir_option(stop)
    stop.set_defaults(func=_cmd_stop)

    status = commands.add_parser(
        "status", help=f"print running/stopped (exit 0 if running, {EXIT_STOPPED} if stopped)"
    )
    data_dir_option(status)
    status.set_defaults(func=_cmd_status)


def _cmd_start(args: argparse.Namespace) -> int:
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        print(f"{BOOTSTRAP_ENV} is set: using the external Kafka at {external}; not starting one")
        return 0

    # Imported lazily so `pipeline --help` doesn't load confluent_kafka.
    from pipeline.localkafka.broker import BrokerConfig, BrokerError, LocalBroker, running_state
    from pipeline.localkafka.cluster import running_cluster

    data_dir: Path = args.data_dir
    existing = running_state(data_dir)
    if existing is not None:
        print(f"already running at {existing.bootstrap_servers} (pid {existing.pid})")
        return 0
    cluster = running_cluster(data_dir)
    if cluster is not None:
        layout, live = cluster
        print(
            f"a {len(layout.nodes)}-broker cluster already runs at {layout.bootstrap_servers} "
            f"({len(live)} nodes up)"
        )
        return 0
    if args.brokers < 1:
        print("pipeline: --brokers must be at least 1", file=sys.stderr)
        return 2
    if args.brokers > 1:
        return _start_cluster(data_dir, args.port, args.brokers)
    broker = LocalBroker(BrokerConfig(data_dir=data_dir, port=args.port))
    try:
        bootstrap = broker.start(detach=True)
    except (BrokerError, JarsError) as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return 1
    print(
        f"Kafka running at {bootstrap} (pid {broker.pid}, started in "
        f"{broker.startup_seconds:.1f}s, data in {data_dir.resolve()})"
    )
    print(f"export {BOOTSTRAP_ENV}={bootstrap}")
    return 0


def _start_cluster(data_dir: Path, port: int, brokers: int) -> int:
    from pipeline.localkafka.broker import BrokerError
    from pipeline.localkafka.cluster import LocalCluster, LocalClusterConfig

    cluster = LocalCluster(LocalClusterConfig(data_dir=data_dir, brokers=brokers, port=port))
    try:
        bootstrap = cluster.start(detach=True)
    except (BrokerError, JarsError) as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return 1
    pids = ", ".join(str(cluster.broker(i).pid) for i in cluster.node_ids)
    print(
        f"Kafka cluster of {brokers} brokers running at {bootstrap} (pids {pids}, started "
        f"in {cluster.startup_seconds:.1f}s, data in {data_dir.resolve()})"
    )
    print(f"export {BOOTSTRAP_ENV}={bootstrap}")
    print("export PIPELINE_REPLICATION_FACTOR=3")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from pipeline.localkafka.broker import stop_broker
    from pipeline.localkafka.cluster import stop_cluster

    stopped = stop_broker(args.data_dir)
    nodes = stop_cluster(args.data_dir)
    if stopped is not None:
        print(f"stopped broker at {stopped.bootstrap_servers} (pid {stopped.pid})")
    for node in nodes:
        print(f"stopped cluster node at {node.bootstrap_servers} (pid {node.pid})")
    if stopped is None and not nodes:
        print("not running")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from pipeline.localkafka.broker import running_state
    from pipeline.localkafka.cluster import running_cluster

    external = os.environ.get(BOOTSTRAP_ENV)
    state = running_state(args.data_dir)
    cluster = running_cluster(args.data_dir)
    if state is not None:
        print(f"running {state.bootstrap_servers} (pid {state.pid})")
        code = 0
    elif cluster is not None:
        layout, live = cluster
        up = ", ".join(f"{s.bootstrap_servers} (pid {s.pid})" for s in live)
        print(
            f"running cluster {layout.bootstrap_servers}: {len(live)}/{len(layout.nodes)} up: {up}"
        )
        code = 0
    else:
        print("stopped")
        code = EXIT_STOPPED
    if external:
        print(f"note: {BOOTSTRAP_ENV}={external} is set; clients use that, not this broker")
    return code
