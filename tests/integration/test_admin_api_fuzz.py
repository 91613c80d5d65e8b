"""The Admin API under schemathesis, as a new user would run it: the real server over
the real views on the real broker, every check, positive and negative data, stateful
sequences, with an admin token, a read token and none. No 5xx, and every answer as the
OpenAPI document says."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.settings import Settings
from tests.support.admin_api import admin_api_process
from tests.support.runtime import runtime_settings
from topics.provision import provision

pytestmark = pytest.mark.integration

ADMIN, READER = "fuzz-admin", "fuzz-reader"
# Seconds per token, most where most is reachable: the whole suite must stay within its
# budget on two cores. PIPELINE_FUZZ_SCALE=10 runs ten times as long.
_SCALE = float(os.environ.get("PIPELINE_FUZZ_SCALE", "1"))
SECONDS = {"admin": 30 * _SCALE, "read": 10 * _SCALE, "anonymous": 5 * _SCALE}


@pytest.fixture
def admin_api(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Iterator[str]:
    settings: Settings = runtime_settings(kafka_bootstrap, topic_prefix)
    provision(kafka_bootstrap, settings.catalogue)
    with admin_api_process(settings, tmp_path, admin=ADMIN, read=READER) as base:
        yield base


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
