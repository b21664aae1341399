"""The faust pass-through ceiling: a faust app configured exactly like the pipeline's (``agents.app.create_app``)
whose one agent only counts the records of the events topic.

``--mode take`` consumes like the pipeline's fold agent (``take_events`` with the same batch size and wait);
``--mode iter`` iterates events one by one (``async for event in stream.events()``). The app has no tables, its
own consumer group, and stops (writing its result file) once every partition reached the end offset it had when
the topic was filled. Run as a child process of the benchmark::

    python -m livestream.bench.passthrough --namespace NS --topic T --ends '{"0": N}' --result out.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import faust

from agents.app import create_app
from agents.table_context import raw_bytes
from livestream.bench.common import ChildResult, PartitionTally, free_port, json_arg
from stream.settings import Settings


class Counter:
    """Counts records below the prefilled end offsets; writes the result and ends the process when all are in."""

    def __init__(self, ends: dict[int, int], result: Path) -> None:
        self.tally = PartitionTally(ends)
        self.ends = ends
        self.result = result
        self.total = self.in_hand = 0
        self.first_t = self.first_cpu = 0.0

    def add(self, events: list[Any]) -> None:
        ends, tally = self.ends, self.tally
        for event in events:
            message = event.message
            if message.offset < ends.get(message.partition, 0):
                tally.add(message.partition, 1, message.offset)
                self.total += 1
        if not self.first_t and self.total:
            self.first_t, self.first_cpu, self.in_hand = time.monotonic(), time.process_time(), self.total
        if tally.done:
            now, cpu = time.monotonic(), time.process_time()
            counts, highest = tally.as_json()
            ChildResult(
                self.total - self.in_hand, now - self.first_t, cpu - self.first_cpu, self.total, counts, highest
            ).write(self.result)
            os._exit(0)  # the measurement is over; faust's graceful shutdown takes seconds and measures nothing


def build(namespace: str, topic_name: str, mode: str, counter: Counter, data_dir: Path) -> faust.App:
    overrides: dict[str, Any] = {"namespace": namespace, "data_dir": data_dir, "web_port": free_port()}
    settings = Settings(**overrides)
    app = create_app(settings)
    topic = app.topic(topic_name, schema=raw_bytes())

    if mode == "take":

        @app.agent(topic, name="count")
        async def count_batches(stream: faust.StreamT[bytes]) -> None:
            batches: AsyncIterator[list[Any]] = stream.take_events(  # type: ignore[attr-defined]
                settings.batch_max_records, settings.batch_within_s
            )
            async for batch in batches:
                counter.add(batch)

    else:

        @app.agent(topic, name="count")
        async def count_events(stream: faust.StreamT[bytes]) -> None:
            async for event in stream.events():
                counter.add([event])

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespace", required=True, help="app id / consumer group prefix of the counting app")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--ends", required=True, help="JSON: partition -> end offset to read up to")
    parser.add_argument("--mode", choices=["take", "iter"], default="take")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--result", required=True, type=Path)
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    counter = Counter(json_arg(args.ends), args.result)
    app = build(args.namespace, args.topic, args.mode, counter, args.data_dir)
    sys.argv = [sys.argv[0], "worker"]
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
