"""The peer: quixstreams counting events per livestream in a 1-minute tumbling window, by event time.

The Kafka key (``channel_id``) groups the windows; event time is the event's ``ts_ms``; windows are
``tumbling_window(60 s, grace 10 s).count().current()`` (every event emits its window's running count) with
quixstreams' defaults otherwise (RocksDB state with a changelog topic, at-least-once, commit every 5 s). It reads
the same single-event topic as the pipeline and stops once every partition reached the end offset it had when
the topic was filled. The sum over windows of their last count must equal the number of events read, or the
process exits 3. Run as a child process of the benchmark::

    python -m livestream.bench.quix --bootstrap H:P --group G --topic T --ends '{"0": N}' --result out.json
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from quixstreams import Application, message_context

from livestream.bench.common import ChildResult, PartitionTally, json_arg

WINDOW = timedelta(minutes=1)
GRACE = timedelta(seconds=10)


def event_time(value: Any, headers: Any, timestamp: float, timestamp_type: Any) -> int:
    return int(value["ts_ms"])


def run(bootstrap: str, group: str, topic_name: str, ends: dict[int, int], state_dir: Path, result: Path) -> int:
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        state_dir=str(state_dir),
        loglevel="WARNING",
    )
    topic = app.topic(topic_name, value_deserializer="json", timestamp_extractor=event_time)
    tally = PartitionTally(ends)
    windows: dict[tuple[bytes, int], int] = {}
    clock: dict[str, float] = {"first_t": 0.0, "first_cpu": 0.0, "last_t": 0.0, "last_cpu": 0.0, "in_hand": 0}
    total = [0]

    def record(value: dict[str, Any], key: bytes, timestamp: int, headers: Any) -> None:
        windows[(key, value["start"])] = value["value"]
        context = message_context()
        tally.add(context.partition, 1, context.offset)
        total[0] += 1
        if not clock["first_t"]:
            clock.update(first_t=time.monotonic(), first_cpu=time.process_time(), in_hand=total[0])
        if tally.done:
            clock.update(last_t=time.monotonic(), last_cpu=time.process_time())
            app.stop()

    sdf = app.dataframe(topic)
    sdf = sdf.tumbling_window(WINDOW, grace_ms=GRACE).count().current()
    sdf = sdf.update(record, metadata=True)
    app.run(timeout=60)  # also stops after 60 s without a message, so a miscount ends in a failed check, not a hang
    if not clock["last_t"]:
        clock.update(last_t=time.monotonic(), last_cpu=time.process_time())
    counts, highest = tally.as_json()
    in_hand = int(clock["in_hand"])
    ChildResult(
        total[0] - in_hand,
        clock["last_t"] - clock["first_t"],
        clock["last_cpu"] - clock["first_cpu"],
        total[0],
        counts,
        highest,
    ).write(result)
    counted = sum(windows.values())
    if counted != total[0]:
        print(f"window counts sum to {counted}, but {total[0]} events were read", file=sys.stderr)
        return 3
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--ends", required=True, help="JSON: partition -> end offset to read up to")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--result", required=True, type=Path)
    args = parser.parse_args()
    sys.exit(run(args.bootstrap, args.group, args.topic, json_arg(args.ends), args.state_dir, args.result))


if __name__ == "__main__":
    main()
