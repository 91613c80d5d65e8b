"""A process's local RocksDB: where the scheduler materialises each owned partition's
state, and the Admin API its replica of the whole changelog.

One database per process and role; the scheduler tells partitions apart by a two-byte
key prefix. The changelog topic stays the durable truth; this store is a cache of it
that survives a restart of the same instance, so recovery reads only the changelog's
tail instead of all of it, and memory does not grow with the number of invocations and
queues.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from rocksdict import BlockBasedOptions, Cache, Options, Rdict

log = logging.getLogger(__name__)

# Small on purpose: the working set of a batch is in the decoded-object cache above,
# and RSS is the figure issue 3 bounds (1M waiting queues in < 300 MB).
_WRITE_BUFFER_BYTES = 16 << 20
_BLOCK_CACHE_BYTES = 32 << 20


def default_state_root() -> Path:
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "pipeline"


class StateStore:
    """The RocksDB directory of one instance of a role (`scheduler`, `admin-api`).

    With a stable instance id the directory is reused across restarts; without one it
    is private to this process and deleted on close, since nobody could find it again.
    """

    def __init__(
        self, root: Path, group: str, instance_id: str | None, *, role: str = "scheduler"
    ) -> None:
        base = root / role / group
        base.mkdir(parents=True, exist_ok=True)
        self.ephemeral = instance_id is None
        if instance_id is None:
            _remove_abandoned(base)
            prefix = f"{_PRIVATE}{uuid.uuid4().hex[:8]}-"
            self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        else:
            self.path = base / instance_id
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(_WRITE_BUFFER_BYTES)
        options.set_max_write_buffer_number(2)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(_BLOCK_CACHE_BYTES))
        # Every new invocation is first looked up by id, and misses: a bloom filter
        # answers most misses without reading a data block.
        table.set_bloom_filter(10, False)
        options.set_block_based_table_factory(table)
        self.db = Rdict(str(self.path), options)
        _OPEN.add(self.path)
        log.info("%s state in %s", role, self.path)

    def wipe_partition(self, partition: int) -> None:
        self.db.delete_range(partition_prefix(partition), partition_prefix(partition + 1))

    def close(self) -> None:
        self.db.close()
        _OPEN.discard(self.path)
        if self.ephemeral:
            shutil.rmtree(self.path, ignore_errors=True)


_PRIVATE = "tmp-"


def _remove_abandoned(base: Path) -> None:
    """Delete private directories whose process died without closing them (kill -9).

    RocksDB holds a POSIX lock on its LOCK file while open: a directory whose lock we
    can take is open nowhere. (POSIX locks do not conflict within one process, so this
    process's own open stores are told apart by being in `_OPEN`.)
    """
    for path in base.glob(f"{_PRIVATE}*"):
        if path in _OPEN or not path.is_dir():
            continue
        lock = path / "LOCK"
        if not lock.exists():
            continue  # not opened yet: another process may be creating it right now
        try:
            with lock.open("r+") as handle:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.lockf(handle, fcntl.LOCK_UN)
        except BlockingIOError:
            continue  # open in a live process
        except OSError as exc:
            log.warning("cannot check private state %s: %s", path, exc)
            continue
        log.info("removing private state %s left by a process that died", path)
        shutil.rmtree(path, ignore_errors=True)


_OPEN: set[Path] = set()


def partition_prefix(partition: int) -> bytes:
    return partition.to_bytes(2, "big")
