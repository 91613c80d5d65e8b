"""Run a KRaft Kafka broker (combined broker + controller) from Maven jars.

By default one node is its own controller quorum; `cluster.LocalCluster` runs several
nodes that share a quorum (`BrokerConfig.quorum_voters`, `cluster_id`, `overrides`).

Data dir layout (all created by `LocalBroker.start`):

    server.properties   generated broker config
    log4j2.yaml         copy of the packaged logging config
    broker.log          the JVM's stdout + stderr
    broker.json         pid / bootstrap address, so other processes can stop it
    kraft/              log.dirs (topic data and the metadata log)
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType

from pipeline.localkafka.jars import default_cache_dir, ensure_jars

STATE_FILE = "broker.json"
LOG_FILE = "broker.log"
PROPERTIES_FILE = "server.properties"
LOG4J_FILE = "log4j2.yaml"
LOG_DIRS = "kraft"

_MAIN_CLASS = "kafka.Kafka"
_PR_SET_PDEATHSIG = 1
_MAX_LOG_BYTES = 10 * 1024 * 1024


class BrokerError(RuntimeError):
    """The local broker could not be started or stopped."""


@dataclass(frozen=True)
class BrokerConfig:
    data_dir: Path
    # None picks a free loopback port at start time.
    port: int | None = None
    controller_port: int | None = None
    host: str = "127.0.0.1"
    node_id: int = 1
    heap: str = "512m"
    startup_timeout: float = 60.0
    stop_timeout: float = 30.0
    # None means jars.default_cache_dir() (honours PIPELINE_CACHE_DIR).
    cache_dir: Path | None = None
    # Cluster membership. None: a one-node quorum of node_id on controller_port. Set,
    # it is `controller.quorum.voters` verbatim and controller_port must be fixed.
    quorum_voters: str | None = None
    # Used when the data dir is formatted (every node of a cluster needs the same one).
    # None: a random id.
    cluster_id: str | None = None
    # Server properties written after (and so replacing) the generated ones.
    overrides: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class BrokerState:
    """What another process needs to find, check and stop a running broker."""

    pid: int
    bootstrap_servers: str
    data_dir: Path
    properties_file: Path

    def to_json(self) -> str:
        return json.dumps(
            {
                "pid": self.pid,
                "bootstrap_servers": self.bootstrap_servers,
                "data_dir": str(self.data_dir),
                "properties_file": str(self.properties_file),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> BrokerState:
        raw = json.loads(text)
        return cls(
            pid=int(raw["pid"]),
            bootstrap_servers=str(raw["bootstrap_servers"]),
            data_dir=Path(raw["data_dir"]),
            properties_file=Path(raw["properties_file"]),
        )


@dataclass(frozen=True)
class _Prepared:
    java: str
    jvm_common: tuple[str, ...]
    props: Path
    bootstrap: str
    started: float


class LocalBroker:
    """One broker JVM. `start()` blocks until the broker answers metadata requests."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self._proc: subprocess.Popen[bytes] | None = None
        self._bootstrap: str | None = None
        # Between prepare() and launch().
        self._prepared: _Prepared | None = None
        # Between launch() and wait_ready(): the address and when the launch began.
        self._launched: tuple[str, float] | None = None
        self.startup_seconds: float | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self._bootstrap is None:
            raise BrokerError("broker not started")
        return self._bootstrap

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, *, detach: bool = False) -> str:
        """Start the broker and return its bootstrap address.

        detach=False ties the broker to this process (it gets SIGTERM if we die, so a
        killed test run leaks no JVM); detach=True lets it outlive the caller.
        """
        self.launch(detach=detach)
        return self.wait_ready()

    def launch(self, *, detach: bool = False) -> None:
        """Start the JVM without waiting for it: a node of a multi-node quorum only
        answers once a majority of the voters runs, so a cluster launches all first."""
        if self._prepared is None:
            self.prepare()
        prepared, self._prepared = self._prepared, None
        assert prepared is not None
        cfg, data_dir = self.config, prepared.props.parent
        log_path = data_dir / LOG_FILE
        # The log is appended across restarts of a persistent data dir; keep it bounded.
        if log_path.exists() and log_path.stat().st_size > _MAX_LOG_BYTES:
            log_path.replace(log_path.with_name(LOG_FILE + ".1"))
        cmd = [
            prepared.java,
            f"-Xmx{cfg.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            *prepared.jvm_common,
            _MAIN_CLASS,
            str(prepared.props),
        ]
        with log_path.open("ab") as log:
            log.write(f"\n=== pipeline: starting broker at {prepared.bootstrap} ===\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=data_dir,
                start_new_session=detach,
                preexec_fn=None if detach else _die_with_parent_hook(),
            )
        state = BrokerState(self._proc.pid, prepared.bootstrap, data_dir, prepared.props)
        (data_dir / STATE_FILE).write_text(state.to_json(), encoding="utf-8")
        self._launched = (prepared.bootstrap, prepared.started)

    def prepare(self) -> None:
        """What `launch` does before starting the JVM: choose ports, write the config,
        format a new data dir. Safe to run on another thread (a cluster formats its
        nodes at once); `launch` must run on a thread that outlives the broker, which
        gets SIGTERM when that thread ends unless detached."""
        if self._proc is not None:
            raise BrokerError("broker already started by this object")
        cfg = self.config
        data_dir = cfg.data_dir.resolve()
        existing = running_state(data_dir)
        if existing is not None:
            raise BrokerError(
                f"a broker already runs on {data_dir} at {existing.bootstrap_servers} "
                f"(pid {existing.pid})"
            )

        started = time.monotonic()
        lib = ensure_jars(cfg.cache_dir or default_cache_dir())
        java = _java_executable()
        if cfg.quorum_voters is not None and cfg.controller_port is None:
            raise BrokerError("quorum_voters needs a fixed controller_port")
        port, controller_port = _choose_ports(cfg.host, cfg.port, cfg.controller_port)
        bootstrap = f"{cfg.host}:{port}"

        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "logs").mkdir(exist_ok=True)
        log4j = data_dir / LOG4J_FILE
        log4j.write_text(
            resources.files("pipeline.localkafka").joinpath(LOG4J_FILE).read_text("utf-8"),
            encoding="utf-8",
        )
        props = data_dir / PROPERTIES_FILE
        props.write_text(
            _server_properties(cfg, data_dir / LOG_DIRS, port, controller_port),
            encoding="utf-8",
        )
        jvm_common = [
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={data_dir / 'logs'}",
            "-Djava.awt.headless=true",
            "-cp",
            str(lib / "*"),
        ]
        # Formatting again would fail ("already formatted"): a restart keeps its data.
        if not (data_dir / LOG_DIRS / "meta.properties").exists():
            _format_storage(java, jvm_common, props, cfg.cluster_id or random_cluster_id())
        self._prepared = _Prepared(java, tuple(jvm_common), props, bootstrap, started)

    def wait_ready(self, timeout: float | None = None) -> str:
        """Block until the launched broker answers metadata requests; return its address.

        A broker that does not get ready is stopped before the error is raised.
        """
        proc, launched = self._proc, self._launched
        if proc is None or launched is None:
            raise BrokerError("broker not launched")
        bootstrap, started = launched
        log_path = self.config.data_dir.resolve() / LOG_FILE
        try:
            _wait_ready(proc, bootstrap, log_path, timeout or self.config.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self._bootstrap = bootstrap
        self._launched = None
        self.startup_seconds = time.monotonic() - started
        return bootstrap

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would: no controlled shutdown, no flush."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._forget(proc)

    @property
    def is_running(self) -> bool:
        """Launched by this object and not exited (ready or not)."""
        return self._proc is not None and self._proc.poll() is None

    def request_stop(self) -> None:
        """Send SIGTERM (a controlled shutdown) without waiting; `stop()` waits."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.config.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._forget(proc)

    def _forget(self, proc: subprocess.Popen[bytes]) -> None:
        _remove_state(self.config.data_dir.resolve(), proc.pid)
        self._proc = None
        self._bootstrap = None
        self._launched = None

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def read_state(data_dir: Path) -> BrokerState | None:
    try:
        return BrokerState.from_json((data_dir / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError):
        return None


def running_state(data_dir: Path) -> BrokerState | None:
    """The state of a live broker on data_dir; a stale state file is removed."""
    data_dir = data_dir.resolve()
    state = read_state(data_dir)
    if state is None:
        return None
    if _is_our_broker(state):
        return state
    _remove_state(data_dir, state.pid)
    return None


def stop_broker(data_dir: Path, timeout: float = 30.0) -> BrokerState | None:
    """Stop the broker recorded in data_dir (from any process); return what was stopped."""
    stopped = stop_brokers([data_dir], timeout)
    return stopped[0] if stopped else None


def stop_brokers(data_dirs: list[Path], timeout: float = 30.0) -> list[BrokerState]:
    """Stop the brokers recorded in data_dirs (from any process) and return them.

    All get SIGTERM at once: nodes of one quorum stopped one after another would leave
    the last ones waiting for a controller that is gone. SIGKILL after `timeout`.
    """
    states = [s for s in (running_state(d.resolve()) for d in data_dirs) if s is not None]
    for state in states:
        _signal(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for state in states:
        if not _wait_gone(state, max(0.0, deadline - time.monotonic())):
            _signal(state.pid, signal.SIGKILL)
            _wait_gone(state, 10.0)
        _remove_state(state.data_dir, state.pid)
    return states


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def log_tail(log_path: Path, max_lines: int = 40) -> str:
    try:
        with log_path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16_384))
            data = f.read()
    except FileNotFoundError:
        return "(no broker log)"
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-max_lines:])


def _server_properties(cfg: BrokerConfig, log_dirs: Path, port: int, controller_port: int) -> str:
    host = cfg.host
    props = {
        "process.roles": "broker,controller",
        "node.id": str(cfg.node_id),
        # Static quorum (not KIP-853 dynamic): matches `format -t <id>` without --standalone.
        "controller.quorum.voters": f"{cfg.node_id}@{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(log_dirs),
        "num.partitions": "1",
        # Topics are declared by the project; a typo must fail, not create a topic.
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        # One partition each: the first group join / transaction needs no 50-partition
        # internal topic creation, which takes seconds on a small machine.
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # Failover in seconds: consumers may ask for sessions down to 1 s (default
        # minimum 6 s), and a dead producer's open transaction is aborted within a
        # second of its timeout (checked every 10 s by default), so that readers of
        # its partitions are not held behind it.
        "group.min.session.timeout.ms": "1000",
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
        # Offset commits (also those inside transactions) wait up to this long to be
        # batched (default 10 ms), which would add to every invocation's latency.
        "group.coordinator.append.linger.ms": "0",
        # The cleaner preallocates this on the heap (default 128 MiB).
        "log.cleaner.dedupe.buffer.size": "8388608",
    }
    if cfg.quorum_voters is not None:
        props["controller.quorum.voters"] = cfg.quorum_voters
    props.update(cfg.overrides)
    lines = ["# Generated by pipeline.localkafka.broker; rewritten on every start."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def _format_storage(java: str, jvm_common: list[str], props: Path, cluster_id: str) -> None:
    cmd = [
        java,
        "-Xmx256m",
        # A short-lived tool: C1 only starts noticeably faster.
        "-XX:TieredStopAtLevel=1",
        *jvm_common,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(props),
    ]
    result = subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BrokerError(
            f"kafka.tools.StorageTool format failed (exit {result.returncode}):\n"
            + result.stdout[-4000:]
        )


def random_cluster_id() -> str:
    # Same shape as Kafka's Uuid.randomUuid().toString(): unpadded URL-safe base64.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        # Kafka avoids a leading '-' too, since CLIs would parse it as an option.
        if not cluster_id.startswith("-"):
            return cluster_id


def _java_executable() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError("no java on PATH (and JAVA_HOME unset); Java 17+ is required")
    return java


def _choose_ports(host: str, port: int | None, controller_port: int | None) -> tuple[int, int]:
    chosen = choose_ports(host, [port, controller_port])
    return chosen[0], chosen[1]


def choose_ports(host: str, wanted_ports: list[int | None]) -> list[int]:
    """Each wanted port if free (else BrokerError), or a free one for None; all distinct."""
    # Holding all sockets until all are known keeps the ports distinct.
    held: list[socket.socket] = []
    try:
        chosen: list[int] = []
        for wanted in wanted_ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            # Connections of a broker that just stopped linger in TIME_WAIT for a
            # minute: they must not make its port look taken. A listener still does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, wanted or 0))
            except OSError as exc:
                # Checked up front: otherwise readiness could succeed against
                # whatever else already listens there.
                raise BrokerError(f"port {host}:{wanted} is not free: {exc}") from exc
            chosen.append(sock.getsockname()[1])
        return chosen
    finally:
        for sock in held:
            sock.close()


def _die_with_parent_hook() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    # Loaded before fork: dlopen in the forked child could deadlock on loader locks.
    libc = ctypes.CDLL(None, use_errno=True)

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


def _wait_ready(
    proc: subprocess.Popen[bytes], bootstrap: str, log_path: Path, timeout: float
) -> None:
    # Imported here: the rest of the module (state / stop) must work without it loaded.
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    host, _, port = bootstrap.rpartition(":")
    deadline = time.monotonic() + timeout
    admin: AdminClient | None = None
    last_error = "not reachable yet"
    while True:
        code = proc.poll()
        if code is not None:
            raise BrokerError(
                f"Kafka broker exited with code {code} during startup; "
                f"tail of {log_path}:\n{log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise BrokerError(
                f"Kafka broker at {bootstrap} not ready after {timeout:g}s "
                f"({last_error}); tail of {log_path}:\n{log_tail(log_path)}"
            )
        # A plain TCP probe first keeps librdkafka from logging connection refusals.
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                pass
        except OSError as exc:
            last_error = str(exc)
            time.sleep(0.1)
            continue
        if admin is None:
            admin = AdminClient({"bootstrap.servers": bootstrap}, logger=quiet_logger())
        try:
            admin.list_topics(timeout=1)
            return
        except KafkaException as exc:
            last_error = str(exc)


def quiet_logger() -> logging.Logger:
    logger = logging.getLogger("pipeline.localkafka.readiness")
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


def _wait_gone(state: BrokerState, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_alive(state.pid):
            return True
        time.sleep(0.1)
    return not _is_alive(state.pid)


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still accepts signal 0 but is finished; its parent just hasn't reaped it.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _is_our_broker(state: BrokerState) -> bool:
    if not _is_alive(state.pid):
        return False
    # Guards against pid reuse: never signal a process that isn't this data dir's broker.
    if not Path("/proc/self").exists():
        return True  # no procfs: trust the state file
    try:
        raw = Path(f"/proc/{state.pid}/cmdline").read_bytes()
    except OSError:
        return False
    args = raw.decode(errors="replace").split("\0")
    return _MAIN_CLASS in args and str(state.properties_file) in args


def _remove_state(data_dir: Path, pid: int) -> None:
    state = read_state(data_dir)
    # Only our own record: a newer broker may have replaced it meanwhile.
    if state is not None and state.pid == pid:
        (data_dir / STATE_FILE).unlink(missing_ok=True)
