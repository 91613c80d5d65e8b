"""Which partition a key belongs to: Kafka's default (Java) partitioner, murmur2.

Every producer of pipeline places runtime records with this function, and the
scheduler forwards a record that arrived elsewhere (e.g. from kcat, whose default
partitioner differs) to the partition this function names, so that all records of one
partition key meet in one place.
"""

from __future__ import annotations

import struct

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's `Utils.murmur2` (seed 0x9747b28c), as an unsigned 32-bit integer."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    end = length - length % 4
    for (k,) in struct.iter_unpack("<I", data[:end]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    rest = length % 4
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: str, partitions: int) -> int:
    """`toPositive(murmur2(key)) % partitions`, as Kafka's Java producer computes it."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
