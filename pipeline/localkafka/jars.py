"""Resolve the local broker's classpath from Maven Central, once per Kafka version."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

CACHE_DIR_ENV = "PIPELINE_CACHE_DIR"
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
_MARKER = ".complete"


class JarsError(RuntimeError):
    """The broker jars could not be resolved."""


def repo_root() -> Path | None:
    """The source checkout this package runs from, or None when installed elsewhere."""
    candidate = Path(__file__).resolve().parents[2]
    if (candidate / "pyproject.toml").is_file() and (candidate / "pipeline").is_dir():
        return candidate
    return None


def default_cache_dir() -> Path:
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    root = repo_root()
    if root is not None:
        return root / ".cache"
    # A non-editable install must not write into site-packages.
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "pipeline"


def pom_text() -> str:
    return resources.files("pipeline.localkafka").joinpath("pom.xml").read_text(encoding="utf-8")


def kafka_version(pom: str | None = None) -> str:
    """The Kafka version pinned in pom.xml, the single place versions are set."""
    root = ET.fromstring(pom if pom is not None else pom_text())
    node = root.find("m:properties/m:kafka.version", _POM_NS)
    if node is None or not (node.text or "").strip():
        raise JarsError("pom.xml has no <kafka.version> property")
    return (node.text or "").strip()


def lib_dir(cache_dir: Path, version: str | None = None) -> Path:
    return cache_dir / f"kafka-{version or kafka_version()}" / "lib"


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_jars(cache_dir: Path) -> Path:
    """Return a directory holding the full broker classpath, downloading it if needed.

    The marker records a hash of pom.xml, so editing the pom (e.g. a log4j bump
    without a Kafka bump) re-resolves instead of silently reusing stale jars.
    """
    pom = pom_text()
    version = kafka_version(pom)
    pom_hash = hashlib.sha256(pom.encode("utf-8")).hexdigest()
    lib = lib_dir(cache_dir, version)
    marker = lib / _MARKER

    if _is_complete(marker, pom_hash):
        return lib
    with _exclusive_lock(cache_dir / f"kafka-{version}.lock"):
        # Another process may have finished the download while we waited.
        if _is_complete(marker, pom_hash):
            return lib
        _download(pom, version, lib)
        marker.write_text(pom_hash + "\n", encoding="utf-8")
    return lib


def _is_complete(marker: Path, pom_hash: str) -> bool:
    try:
        return marker.read_text(encoding="utf-8").strip() == pom_hash
    except FileNotFoundError:
        return False


def _download(pom: str, version: str, lib: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise JarsError("Maven (mvn) is not on PATH; it is needed once to fetch the Kafka jars")
    # A half-finished earlier attempt may have left jars of another resolution behind.
    if lib.exists():
        shutil.rmtree(lib)
    build_dir = lib.parent / "build"
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "pom.xml").write_text(pom, encoding="utf-8")

    print(
        f"pipeline: downloading Apache Kafka {version} broker jars with Maven "
        f"into {lib} (one time, ~45 MB)...",
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(build_dir / "pom.xml"),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={lib}",
        ],
        cwd=build_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise JarsError(
            f"mvn dependency:copy-dependencies failed (exit {result.returncode}):\n"
            + result.stdout[-4000:]
        )
    if not any(lib.glob("kafka_2.13-*.jar")):
        raise JarsError(f"mvn succeeded but {lib} holds no kafka_2.13 jar")
    print(
        f"pipeline: Kafka jars ready in {time.monotonic() - started:.1f}s",
        file=sys.stderr,
        flush=True,
    )


def main() -> int:
    try:
        lib = ensure_jars(default_cache_dir())
    except JarsError as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return 1
    print(lib)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
