"""docker-compose.yml cannot be run on a machine without Docker; check it hangs together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_services_depend_only_on_services_that_exist() -> None:
    services = compose()["services"]
    assert {"kafka", "topics", "runtime"} <= services.keys()
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_named_volumes_are_declared_and_host_ports_are_not_shared() -> None:
    document = compose()
    declared = set(document.get("volumes") or {})
    host_ports: list[str] = []
    for name, service in document["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith(("/", ".")):
                assert source in declared, f"{name} uses undeclared volume {source}"
        host_ports += [port.split(":")[0] for port in service.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), f"host ports used twice: {host_ports}"


def test_the_scheduler_state_survives_a_container_restart() -> None:
    runtime = compose()["services"]["runtime"]
    state_dir = runtime["environment"]["PIPELINE_STATE_DIR"]
    assert any(volume.endswith(f":{state_dir}") for volume in runtime["volumes"])
    assert runtime["environment"]["PIPELINE_INSTANCE_ID"]
