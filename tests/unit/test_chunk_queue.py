"""The chunk queue hands out batches bounded by records and by bytes, splitting a chunk when needed, in order."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from agents.bulk_consumer import Chunk, ChunkQueue, RunBuilder


@dataclass
class Rec:
    offset: int
    value: bytes
    key: bytes = b"k"


def _chunk(partition: int, first: int, sizes: list[int]) -> Chunk:
    return Chunk(partition, 1, [Rec(first + i, b"x" * size) for i, size in enumerate(sizes)])


def test_a_chunk_over_the_byte_limit_is_split_and_its_rest_comes_next() -> None:
    async def scenario() -> list[list[int]]:
        queue = ChunkQueue("t", max_records=1000, max_bytes=10_000)
        queue.put(_chunk(0, 0, [99] * 10))  # 100 bytes a record with its key
        batches = []
        while queue.chunks:
            batches.append([r.offset for c in queue.take(100, 350) for r in c.records])
        assert queue.buffered == 0 and queue.buffered_bytes == 0
        return batches

    assert asyncio.run(scenario()) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_a_record_larger_than_the_byte_limit_is_taken_alone() -> None:
    async def scenario() -> list[list[int]]:
        queue = ChunkQueue("t", max_records=1000)
        queue.put(_chunk(0, 0, [10, 5000, 10]))
        return [[r.offset for c in queue.take(100, 1000) for r in c.records] for _ in range(3)]

    assert asyncio.run(scenario()) == [[0], [1], [2]]


def test_fetching_pauses_when_the_queue_holds_too_many_bytes() -> None:
    async def scenario() -> tuple[bool, bool]:
        queue = ChunkQueue("t", max_records=1000, max_bytes=1000)
        queue.put(_chunk(0, 0, [600, 600]))
        full = not queue.has_room.is_set()
        queue.take(100, 700)
        return full, queue.has_room.is_set()

    assert asyncio.run(scenario()) == (True, True)


@given(
    chunks=st.lists(st.lists(st.integers(0, 300), min_size=1, max_size=20), min_size=1, max_size=8),
    max_records=st.integers(1, 30),
    max_bytes=st.integers(1, 2000),
)
def test_batches_keep_every_record_once_in_order_within_their_bounds(
    chunks: list[list[int]], max_records: int, max_bytes: int
) -> None:
    async def scenario() -> None:
        queue = ChunkQueue("t", max_records=10_000, max_bytes=1 << 30)
        offsets: dict[int, int] = {}
        expected: list[tuple[int, int]] = []
        for index, sizes in enumerate(chunks):
            partition = index % 3
            first = offsets.get(partition, 0)
            offsets[partition] = first + len(sizes)
            queue.put(_chunk(partition, first, sizes))
            expected += [(partition, first + i) for i in range(len(sizes))]
        seen: list[tuple[int, int]] = []
        while queue.chunks:
            batch = queue.take(max_records, max_bytes)
            records = [r for c in batch for r in c.records]
            assert records and len(records) <= max_records
            assert len(records) == 1 or sum(len(r.value) + len(r.key) for r in records) <= max_bytes
            seen += [(c.partition, r.offset) for c in batch for r in c.records]
        assert seen == expected
        assert queue.buffered == 0 and queue.buffered_bytes == 0

    asyncio.run(scenario())


@given(sizes=st.lists(st.integers(0, 300), max_size=60), max_records=st.integers(1, 30), max_bytes=st.integers(1, 2000))
def test_runs_keep_every_record_once_in_order_within_their_bounds(
    sizes: list[int], max_records: int, max_bytes: int
) -> None:
    records = [Rec(i, b"x" * size) for i, size in enumerate(sizes)]
    builder = RunBuilder(max_records, max_bytes)
    runs = [run for run in map(builder.add, records) if run is not None]
    runs.append(builder.rest())
    assert [r.offset for run in runs for r in run] == list(range(len(sizes)))
    for run in runs:
        assert len(run) <= max_records
        assert len(run) == 1 or sum(len(r.value) + len(r.key) for r in run) <= max_bytes
    assert runs == [[]] if not records else all(runs)


@given(
    chunks=st.lists(st.lists(st.integers(0, 300), max_size=20), max_size=10),
    max_records=st.integers(1, 30),
    max_bytes=st.integers(1, 2000),
)
def test_whole_chunks_added_at_once_keep_the_same_bounds(
    chunks: list[list[int]], max_records: int, max_bytes: int
) -> None:
    """A chunk appended whole when it fits (:meth:`RunBuilder.add_all`), record by record when not: every record
    once, in order, every run within the bounds."""
    builder = RunBuilder(max_records, max_bytes)
    runs: list[list[Rec]] = []
    offset = 0
    for sizes in chunks:
        chunk = Chunk(0, 1, [Rec(offset + i, b"x" * size) for i, size in enumerate(sizes)]).sized()
        offset += len(sizes)
        assert chunk.size == sum(len(r.key) + len(r.value) for r in chunk.records)
        if not builder.add_all(chunk.records, chunk.size):
            runs += [run for run in map(builder.add, chunk.records) if run is not None]
    runs.append(builder.rest())
    assert [r.offset for run in runs for r in run] == list(range(offset))
    for run in runs:
        assert len(run) <= max_records
        assert len(run) == 1 or sum(len(r.value) + len(r.key) for r in run) <= max_bytes
