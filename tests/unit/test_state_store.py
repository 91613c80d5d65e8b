"""The scheduler's local RocksDB directory: private ones left by a kill -9 are removed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.runtime.state_store import StateStore

_HOLD_OPEN = """
import sys, time
from pathlib import Path
from pipeline.runtime.state_store import StateStore
store = StateStore(Path(sys.argv[1]), "group", None)
print(store.path, flush=True)
time.sleep(600)
"""


def _private_store_process(root: Path) -> tuple[subprocess.Popen[str], Path]:
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLD_OPEN, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, Path(process.stdout.readline().strip())


def test_a_private_directory_of_a_killed_process_is_removed_on_start(tmp_path: Path) -> None:
    dead, dead_path = _private_store_process(tmp_path)
    alive, alive_path = _private_store_process(tmp_path)
    try:
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        assert dead_path.exists()  # nothing cleaned up behind a kill -9
        store = StateStore(tmp_path, "group", None)
        try:
            assert not dead_path.exists()
            assert alive_path.exists()  # still open in a live process
            assert store.path.exists()
        finally:
            store.close()
        assert not store.path.exists()
    finally:
        alive.kill()
        alive.wait()


def test_a_named_instance_keeps_its_directory(tmp_path: Path) -> None:
    store = StateStore(tmp_path, "group", "pod-0")
    store.close()
    time.sleep(0.01)
    again = StateStore(tmp_path, "group", None)
    again.close()
    assert (tmp_path / "scheduler" / "group" / "pod-0").exists()
