"""Avro single-object encoding over the `.avsc` files in `schemas/`.

Every record on the wire is `C3 01` + the 8-byte CRC-64-AVRO fingerprint of its writer
schema (little-endian, as the Java implementation writes it) + the schemaless Avro body.
The fingerprint lets a reader pick the exact schema a record was written with, including
older versions kept in `schemas/history/`, and resolve it to the current schema.

Schemas are parsed once, when a `SchemaSet` is built: fastavro re-parsing a schema per
call is about a thousand times slower than reusing the parsed one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.repository.base import AbstractSchemaRepository, SchemaRepositoryError
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form
from fastavro.types import Schema

from pipeline.errors import DecodeError, ValidationError

MARKER = b"\xc3\x01"
"""The two bytes that open every single-object encoded record (Avro spec)."""

HEADER_SIZE = len(MARKER) + 8

NAMESPACE = "pipeline.v1"

HISTORY_DIR = "history"


def default_schema_dir() -> Path:
    """The schemas beside this module: in a checkout a link to `schemas/` at the
    repository root (the contract), in an installed wheel a copy of it."""
    return Path(__file__).parent / "schemas"


def schema_fingerprint(schema: Schema) -> bytes:
    """The 8 bytes that follow the marker: CRC-64-AVRO of the parsing canonical form.

    fastavro already returns the hex of the little-endian bytes, which is the order the
    Avro spec (and Java's `BinaryMessageEncoder`) puts on the wire.
    """
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


@dataclass(frozen=True, slots=True)
class _Writer:
    """A schema some record may have been written with."""

    name: str
    schema: Schema
    fingerprint: bytes
    # The schema to resolve into; None when the writer is the current schema, so that
    # fastavro skips schema resolution on the hot path.
    reader: Schema | None
    source: Path
    # Only a union of several records needs its branch's name to be read back; asking
    # fastavro for names costs ~0.7 us per record even where there are none to return.
    record_names: bool


class SchemaFiles(AbstractSchemaRepository):
    """A fastavro schema repository over `<Name>.avsc` files.

    fastavro's default repository expects `<fullname>.avsc`; ours are named by their
    short name, so `pipeline.v1.Target` is found in `Target.avsc`. Use it as
    `load_schema("pipeline.v1.InvocationRequest", repo=SchemaFiles.scan(directory))`.
    """

    def __init__(self, paths: Mapping[str, Path]) -> None:
        self.paths: Mapping[str, Path] = dict(paths)

    @classmethod
    def scan(cls, directory: Path) -> SchemaFiles:
        """Every `*.avsc` directly in `directory`, by the full name of its record."""
        return cls({_full_name(p): p for p in sorted(directory.glob("*.avsc"))})

    def replacing(self, full_name: str, path: Path) -> SchemaFiles:
        """The same files, but `full_name` read from `path` (an older version)."""
        return SchemaFiles({**self.paths, full_name: path})

    def load(self, name: str) -> Any:
        path = self.paths.get(name) or self.paths.get(f"{NAMESPACE}.{name}")
        if path is None:
            raise SchemaRepositoryError(f"no schema file defines {name!r}")
        return json.loads(path.read_text(encoding="utf-8"))


def _full_name(path: Path) -> str:
    """Full name of the record a `.avsc` file defines, checked against the file name."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValidationError(f"schema file {path} cannot be read: {exc}") from exc
    if not isinstance(document, dict) or document.get("type") != "record":
        raise ValidationError(f"schema file {path} must hold one record schema")
    name = str(document.get("name", ""))
    namespace = str(document.get("namespace", ""))
    full = name if "." in name or not namespace else f"{namespace}.{name}"
    short = full.rpartition(".")[2]
    # History files are `<Name>.v<N>.avsc`; current ones exactly `<Name>.avsc`.
    if path.name.split(".", 1)[0] != short:
        raise ValidationError(f"schema file {path} defines {full!r}: name the file {short}.avsc")
    return full


class SchemaSet:
    """The current schema of every record, plus older writer schemas, by fingerprint.

    `encode` always writes with the current schema. `decode` accepts any schema in the
    set that has the expected record's full name, and resolves it to the current one.
    Names may be given in full (`pipeline.v1.Target`) or short (`Target`).
    """

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_schema_dir()
        if not self.directory.is_dir():
            raise ValidationError(f"schema directory {self.directory} does not exist")
        files = SchemaFiles.scan(self.directory)
        if not files.paths:
            raise ValidationError(f"schema directory {self.directory} has no .avsc files")
        self._current: dict[str, _Writer] = {}
        self._named: dict[str, Any] = {}
        for full, path in files.paths.items():
            schema = _load(full, files, path)
            writer = _Writer(
                full, schema, schema_fingerprint(schema), None, path, _has_record_union(schema)
            )
            self._current[full] = writer
            self._current[full.rpartition(".")[2]] = writer
            if isinstance(schema, dict):
                self._named.update(schema.get("__named_schemas", {}))
        self._writers: dict[bytes, _Writer] = {}
        for writer in self._current.values():
            self._writers[writer.fingerprint] = writer
        for path in sorted((self.directory / HISTORY_DIR).glob("*.avsc")):
            self._add_history(path, files)

    def _add_history(self, path: Path, files: SchemaFiles) -> None:
        full = _full_name(path)
        current = self._current.get(full)
        if current is None:
            raise ValidationError(
                f"history schema {path} is a version of {full!r}, which has no current schema"
            )
        # The history file stands in for its name; types it references (if it does not
        # inline them) come from the current files.
        schema = _load(full, files.replacing(full, path), path)
        fp = schema_fingerprint(schema)
        if fp in self._writers:
            # Same canonical form as a schema we have (e.g. only docs changed): one writer.
            return
        self._writers[fp] = _Writer(full, schema, fp, current.schema, path, current.record_names)

    @property
    def names(self) -> tuple[str, ...]:
        """Full names of the records that have a current schema."""
        return tuple(sorted({w.name for w in self._current.values()}))

    def schema(self, record_name: str) -> Schema:
        """The parsed current schema of a record."""
        return self._writer(record_name).schema

    def fingerprint(self, record_name: str) -> bytes:
        """The 8 fingerprint bytes that records of the current schema carry."""
        return self._writer(record_name).fingerprint

    def writer_fingerprints(self, record_name: str) -> tuple[bytes, ...]:
        """Every fingerprint `decode(record_name, ...)` accepts, the current one first."""
        full = self._writer(record_name).name
        current = self._current[full].fingerprint
        older = (fp for fp, w in self._writers.items() if w.name == full and fp != current)
        return (current, *older)

    def named_type(self, full_name: str) -> Any:
        """A named type (record, enum) as the current schemas define it."""
        try:
            return self._named[full_name]
        except KeyError:
            raise ValidationError(f"no current schema defines the type {full_name!r}") from None

    def _writer(self, record_name: str) -> _Writer:
        try:
            return self._current[record_name]
        except KeyError:
            raise ValidationError(
                f"unknown record {record_name!r}: the schemas in {self.directory} define "
                + ", ".join(self.names)
            ) from None

    def encode(self, record_name: str, record: Mapping[str, Any]) -> bytes:
        """Single-object encoding of `record` with the current schema of `record_name`."""
        writer = self._writer(record_name)
        out = BytesIO()
        out.write(MARKER)
        out.write(writer.fingerprint)
        try:
            schemaless_writer(out, writer.schema, record)
        except Exception as exc:
            # fastavro reports a datum that does not fit with whatever its writer trips
            # on (KeyError, TypeError, ValueError, struct.error...): name the record.
            raise ValidationError(
                f"cannot encode {writer.name}: {type(exc).__name__}: {exc}"
            ) from exc
        return out.getvalue()

    def decode(self, record_name: str, data: bytes) -> dict[str, Any]:
        """The record in `data`, as a dict shaped by the current schema of `record_name`.

        Unions of several records come back as `(full name, dict)` tuples; unions with
        one record (optional records) come back as the dict or None.
        """
        expected = self._writer(record_name)
        if data[:2] != MARKER:
            raise DecodeError(
                f"{expected.name}: not Avro single-object encoding: expected marker c3 01, "
                f"got {_first_bytes(data)}{_framing_hint(data)}"
            )
        if len(data) < HEADER_SIZE:
            raise DecodeError(
                f"{expected.name}: truncated header: {len(data)} bytes, the marker and "
                f"fingerprint need {HEADER_SIZE}"
            )
        fp = data[2:HEADER_SIZE]
        writer = self._writers.get(fp)
        if writer is None:
            raise DecodeError(
                f"{expected.name}: unknown writer schema fingerprint {fp.hex()}: no "
                f"schema in {self.directory} has it (current one is "
                f"{expected.fingerprint.hex()})"
            )
        if writer.name != expected.name:
            raise DecodeError(
                f"expected a {expected.name} record, got one written with the schema of "
                f"{writer.name} (fingerprint {fp.hex()})"
            )
        body = BytesIO(data)
        body.seek(HEADER_SIZE)
        try:
            record = schemaless_reader(
                body,
                writer.schema,
                writer.reader,
                return_record_name=writer.record_names,
                return_record_name_override=writer.record_names,
            )
        except EOFError as exc:
            raise DecodeError(
                f"{expected.name}: truncated body: the data ends inside the record "
                f"({len(data) - HEADER_SIZE} body bytes)"
            ) from exc
        except Exception as exc:
            # Corrupt bytes surface from fastavro as many types (IndexError for a bad
            # union branch, UnicodeDecodeError, ValueError, ...): all mean invalid body.
            raise DecodeError(
                f"{expected.name}: invalid body at byte {body.tell()}: {type(exc).__name__}: {exc}"
            ) from exc
        if body.tell() != len(data):
            raise DecodeError(
                f"{expected.name}: invalid body: {len(data) - body.tell()} bytes left over "
                "after the record"
            )
        if not isinstance(record, dict):  # a record schema always reads as a dict
            raise DecodeError(f"{expected.name}: body is not a record")
        return record


def _has_record_union(schema: Schema) -> bool:
    named: Mapping[str, Any] = schema.get("__named_schemas", {}) if isinstance(schema, dict) else {}

    def is_record(branch: Any) -> bool:
        if isinstance(branch, str):
            branch = named.get(branch)
        return isinstance(branch, dict) and branch.get("type") == "record"

    def walk(node: Any) -> bool:
        if isinstance(node, list):
            return sum(map(is_record, node)) > 1 or any(map(walk, node))
        if isinstance(node, dict):
            return any(walk(v) for k, v in node.items() if k != "__named_schemas")
        return False

    return walk(schema)


def _load(full_name: str, files: SchemaFiles, path: Path) -> Schema:
    try:
        return load_schema(full_name, repo=files)
    except Exception as exc:
        # fastavro raises UnknownType, SchemaParseException, repository errors...: all
        # mean the file is not a valid schema here; say which file.
        raise ValidationError(
            f"schema file {path} does not load: {type(exc).__name__}: {exc}"
        ) from exc


def _first_bytes(data: bytes) -> str:
    if not data:
        return "no bytes (empty value)"
    more = "..." if len(data) > 8 else ""
    return f"{data[:8].hex(' ')}{more}"


def _framing_hint(data: bytes) -> str:
    if data[:1] == b"\x00" and len(data) >= 5:
        return " (looks like Confluent Schema Registry framing, which is not supported)"
    if data.lstrip()[:1] in (b"{", b"["):
        return (
            " (looks like JSON, which only the invocations topic accepts, with the header "
            "content-type: application/json)"
        )
    return ""
