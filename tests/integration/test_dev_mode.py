"""`pipeline dev` in one terminal, the CLI in another, with nothing exported: the dev
broker takes the default port when it is free, and the CLI finds it by itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from pipeline.localkafka.broker import BrokerError, choose_ports
from pipeline.localkafka.cli import DEFAULT_PORT


def _free(port: int) -> bool:
    try:
        choose_ports("127.0.0.1", [port])
    except BrokerError:
        return False
    return True


def test_the_cli_finds_the_broker_pipeline_dev_started(tmp_path: Path) -> None:
    (admin_port,) = choose_ports("127.0.0.1", [None])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "PIPELINE_"))}
    env |= {
        "PIPELINE_TOPIC_PREFIX": f"dev{uuid.uuid4().hex[:6]}.",
        "PIPELINE_ADMIN_API_PORT": str(admin_port),
    }
    default_port_free = _free(DEFAULT_PORT)
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "dev"], env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 120
        while "pipeline is running." not in log.read_text():
            assert dev.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        if default_port_free:
            assert f"Kafka:      127.0.0.1:{DEFAULT_PORT}" in log.read_text()
        greet = ["invoke", "Greeter/greet", "--data", '{"name": "Ada"}', "--wait"]
        invoked = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", *greet],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert invoked.returncode == 0, invoked.stderr[-3000:]
        assert "Hello, Ada!" in invoked.stdout
    finally:
        dev.terminate()
        dev.wait(60)
