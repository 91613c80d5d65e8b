"""Produce records no well-behaved client would: header names that are not UTF-8.

confluent-kafka encodes every header name it is given, so the bytes such a producer
(kcat, a buggy client in another language) writes can only be made one level down:
librdkafka itself, the copy bundled with confluent-kafka, through ctypes.
"""

from __future__ import annotations

import ctypes
import glob
from functools import cache
from pathlib import Path

import confluent_kafka

_PRODUCER = 0
_VTYPE_END, _VTYPE_TOPIC, _VTYPE_PARTITION, _VTYPE_VALUE, _VTYPE_KEY = 0, 1, 3, 4, 5
_VTYPE_MSGFLAGS, _VTYPE_HEADER = 7, 9
_MSG_F_COPY = 0x2


@cache
def _librdkafka() -> ctypes.CDLL:
    package = Path(confluent_kafka.__file__).parent
    found = glob.glob(str(package.parent / "confluent_kafka.libs" / "librdkafka*.so*"))
    if not found:
        raise RuntimeError(f"no librdkafka bundled next to {package}")
    lib = ctypes.CDLL(found[0])
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_flush.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_outq_len.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_err2str.restype = ctypes.c_char_p
    return lib


class RawProducer:
    """A librdkafka producer that takes header names as raw bytes."""

    def __init__(self, bootstrap: str) -> None:
        lib = self._lib = _librdkafka()
        errstr = ctypes.create_string_buffer(512)
        conf = lib.rd_kafka_conf_new()
        for name, setting in (
            (b"bootstrap.servers", bootstrap.encode()),
            (b"acks", b"all"),
            (b"message.max.bytes", b"4000000"),
        ):
            if lib.rd_kafka_conf_set(conf, name, setting, errstr, 512) != 0:
                raise RuntimeError(errstr.value.decode())
        self._rk = lib.rd_kafka_new(_PRODUCER, conf, errstr, 512)
        if not self._rk:
            raise RuntimeError(errstr.value.decode())

    def produce(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        args: list[object] = [
            ctypes.c_int(_VTYPE_TOPIC),
            ctypes.c_char_p(topic.encode()),
            ctypes.c_int(_VTYPE_PARTITION),
            ctypes.c_int32(partition),
            ctypes.c_int(_VTYPE_MSGFLAGS),
            ctypes.c_int(_MSG_F_COPY),
        ]
        if value is not None:
            args += [
                ctypes.c_int(_VTYPE_VALUE),
                ctypes.c_char_p(value),
                ctypes.c_size_t(len(value)),
            ]
        if key is not None:
            args += [ctypes.c_int(_VTYPE_KEY), ctypes.c_char_p(key), ctypes.c_size_t(len(key))]
        for name, header_value in headers:
            args += [
                ctypes.c_int(_VTYPE_HEADER),
                # A name is NUL-terminated in this call: it cannot hold a NUL itself.
                ctypes.c_char_p(name.replace(b"\0", b"")),
                ctypes.c_char_p(header_value),
                ctypes.c_ssize_t(len(header_value)),
            ]
        args.append(ctypes.c_int(_VTYPE_END))
        error = self._lib.rd_kafka_producev(ctypes.c_void_p(self._rk), *args)
        if error != 0:
            raise RuntimeError(f"produce failed: {self._lib.rd_kafka_err2str(error).decode()}")

    def flush(self, timeout_s: float = 30.0) -> None:
        self._lib.rd_kafka_flush(self._rk, int(timeout_s * 1000))
        if self._lib.rd_kafka_outq_len(self._rk) != 0:
            raise RuntimeError(f"records not delivered within {timeout_s} s")

    def close(self) -> None:
        self._lib.rd_kafka_destroy(self._rk)


def produce_raw(
    bootstrap: str,
    topic: str,
    partition: int,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """Produce one record with header names taken as raw bytes; waits for the broker."""
    producer = RawProducer(bootstrap)
    try:
        producer.produce(topic, partition, key, value, headers)
        producer.flush()
    finally:
        producer.close()
