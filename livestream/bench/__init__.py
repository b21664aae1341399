"""The benchmark (``livestream bench`` / ``make bench``): throughput ceilings, our pipeline, the quixstreams peer,
latency to Redis, worker memory and the full fair replay, measured in one run on the local real Kafka and Redis.

See ``docs/performance.md`` for the figures and what limits each one, :mod:`livestream.bench.runner` for the steps.
"""
