"""The Admin API under schemathesis, as a new user would run it: the real server over
the real views on the real broker, every check, positive and negative data, stateful
sequences, with an admin token, a read token and none. No 5xx, and every answer as the
OpenAPI document says."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.settings import Settings
from tests.support.runtime import process_env, runtime_settings
from topics.provision import provision

pytestmark = pytest.mark.integration

ADMIN, READER = "fuzz-admin", "fuzz-reader"
# Seconds per token, most where most is reachable: the whole suite must stay within its
# budget on two cores. PIPELINE_FUZZ_SCALE=10 runs ten times as long.
_SCALE = float(os.environ.get("PIPELINE_FUZZ_SCALE", "1"))
SECONDS = {"admin": 35 * _SCALE, "read": 15 * _SCALE, "anonymous": 8 * _SCALE}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def admin_api(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Iterator[str]:
    settings: Settings = runtime_settings(kafka_bootstrap, topic_prefix)
    provision(kafka_bootstrap, settings.catalogue)
    port = free_port()
    env = {
        **process_env(settings),
        "PIPELINE_ADMIN_API_PORT": str(port),
        "PIPELINE_ADMIN_API_TOKENS": json.dumps([ADMIN]),
        "PIPELINE_ADMIN_API_READ_TOKENS": json.dumps([READER]),
        "PIPELINE_STATE_DIR": str(tmp_path / "state"),
    }
    log = (tmp_path / "admin-api.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "admin-api"], env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (tmp_path / "admin-api.log").read_text()
            assert time.monotonic() < deadline, "the Admin API did not start within 60 s"
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(30)
        log.close()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("role", ["admin", "read", "anonymous"])
def test_schemathesis_finds_no_failure(admin_api: str, role: str, tmp_path: Path) -> None:
    token = {"admin": ADMIN, "read": READER}.get(role)
    seconds = round(SECONDS[role])
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{admin_api}/openapi.json",
        "--checks",
        "all",
        "--mode",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-time",
        str(seconds),
        "--max-examples",
        "30",
        "--seed",
        "20261204",
        "--workers",
        "1",
        "--no-color",
        "--warnings",
        "off",
        "--report-dir",
        str(tmp_path),
    ]
    if token is not None:
        command += ["--header", f"Authorization: Bearer {token}"]
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds * 4 + 120, cwd=tmp_path
    )

    failures = run.stdout[run.stdout.find("FAILURES") :]
    assert run.returncode == 0, _short(failures) + run.stderr[-5_000:]


def _short(report: str) -> str:
    """The report with its long lines cut: generated values can be megabytes."""
    return "\n".join(line[:300] for line in report.splitlines()[:400])
