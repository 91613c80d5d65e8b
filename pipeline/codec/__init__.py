"""The wire contract: Avro single-object encoding of every record, and JSON ingress.

`SchemaSet` loads `schemas/` (once, when built; never at import). `WireCodec` maps the
core's frozen dataclasses to those records and back.
"""

from pipeline.codec.avro import (
    MARKER,
    SchemaFiles,
    SchemaSet,
    default_schema_dir,
    schema_fingerprint,
)
from pipeline.codec.records import WireCodec

__all__ = [
    "MARKER",
    "SchemaFiles",
    "SchemaSet",
    "WireCodec",
    "default_schema_dir",
    "schema_fingerprint",
]
