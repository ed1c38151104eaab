"""Reading Kafka record batches so that no record, whatever its bytes, stalls a partition.

aiokafka decodes a fetched batch inside `getmany`; a record it cannot decode (a header
key that is not UTF-8, a batch whose CRC does not match) raises there, before the
runtime sees anything, and the consumer fetches the same batch again, for ever.
`install_record_guard()` puts a guard around each fetched batch:

- a batch that decodes is read as before, by aiokafka's fast reader;
- a batch that fails part-way is read again from its bytes by aiokafka's own pure-Python
  reader with lenient header keys (bad bytes become U+FFFD), from the record after the
  last one already delivered;
- what cannot be read even so (a bad CRC, a broken record) becomes one *unreadable*
  record at the first offset not delivered, carrying the reason in the `UNREADABLE`
  header; the runtime dead-letters it (`unreadable_record`) and the partition moves on
  past the batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiokafka.consumer import fetcher
from aiokafka.record import default_records, memory_records

from services.runtime.logs import get_logger

log = get_logger(__name__)

#: The header naming why a record could not be read (set only by this module's guard).
UNREADABLE = "x-cm-unreadable"


class _LenientBytes(bytes):
    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes.decode(self, encoding, "replace")


class _LenientBuffer(bytearray):
    """A record buffer whose slices decode with replacement (header keys are the only
    text aiokafka decodes)."""

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        return _LenientBytes(item) if isinstance(index, slice) else item


@dataclass
class _Unreadable:
    """Stands in for records that could not be decoded (what the fetcher reads of one)."""

    offset: int
    reason: str
    timestamp: int = -1
    timestamp_type: int = 0
    key: bytes | None = None
    value: bytes = b""
    checksum: int | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.headers = [(UNREADABLE, self.reason.encode())]


class _GuardedBatch:
    def __init__(self, batch: Any, raw: memoryview) -> None:
        self._batch = batch
        self._raw = raw
        self._crc_ok = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def validate_crc(self) -> bool:
        # Never let the fetcher raise for a bad CRC: the batch becomes an unreadable record.
        self._crc_ok = bool(self._batch.validate_crc())
        return True

    def __iter__(self) -> Iterator[Any]:
        base = self._batch.base_offset
        last = None
        if not self._crc_ok:
            yield self._unreadable(base, "crc_mismatch")
            return
        try:
            for record in self._batch:
                last = record.offset
                yield record
            return
        except Exception as exc:
            reason = type(exc).__name__
        try:
            lenient = default_records._DefaultRecordBatchPy(self._raw)
            lenient._maybe_uncompress()
            lenient._buffer = _LenientBuffer(lenient._buffer)
            for record in lenient:
                if last is None or record.offset > last:
                    last = record.offset
                    yield record
            return
        except Exception as exc:
            reason = f"{reason}, then {type(exc).__name__}"
        yield self._unreadable(base if last is None else last + 1, reason)

    def _unreadable(self, offset: int, reason: str) -> _Unreadable:
        last = self._batch.next_offset - 1
        log.error(
            "a fetched record batch could not be read; dead-lettering it",
            reason=reason,
            first_offset=offset,
            last_offset=last,
        )
        return _Unreadable(offset, f"{reason}; offsets {offset}..{last}")


class GuardedMemoryRecords(memory_records._MemoryRecordsPy):  # type: ignore[misc]
    """aiokafka's record set, each batch behind `_GuardedBatch` (v2 batches only; the
    legacy formats are read as before)."""

    def next_batch(self, *args: Any, **kwargs: Any) -> Any:
        raw = self._next_slice
        batch = super().next_batch(*args, **kwargs)
        if raw is None or batch is None or batch.magic < 2:
            return batch
        return _GuardedBatch(batch, raw)


_installed = False


def install_record_guard() -> None:
    """Guard every consumer's fetched batches in this process (idempotent)."""
    global _installed  # noqa: PLW0603 - one patch per process
    if not _installed:
        fetcher.MemoryRecords = GuardedMemoryRecords  # type: ignore[misc]
        _installed = True
