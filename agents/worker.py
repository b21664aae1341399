"""Builds a worker: the faust app with every agent, timer and web view registered, ready to run."""

from __future__ import annotations

import asyncio
import gc
import logging

import faust

from agents import api, board, campaign, fold, freeze, metrics, recovery_markers, redis_mirror
from agents.app import create_app
from agents.startup import changelog_topics, prepare_kafka, settings_for_topic
from stream.settings import Settings
from stream.snapshot import LiveSnapshot


def build_worker(settings: Settings) -> tuple[faust.App, LiveSnapshot]:
    app = create_app(settings)
    live = LiveSnapshot()
    fold.register(app, settings, live)
    campaign.register(app, settings, live)
    redis_mirror.register(app, settings, live)
    metrics.register(app, settings, live)
    api.register(app, settings, live)
    board.register(app, settings, live)
    recovery_markers.register(app, settings)
    return app, live


GC_YOUNG_THRESHOLD = 50_000
"""Allocations between two young-generation collections (CPython's default is 700): a batch allocates records,
events and headers by the hundred thousand, nearly all freed by reference counting, and each collection walks
every young object; fewer, larger collections cost a fraction of the time."""


def tune_garbage_collector() -> None:
    """Objects built so far (modules, the app, its settings) move out of the collector's sight for good
    (``gc.freeze``), and young collections run every :data:`GC_YOUNG_THRESHOLD` allocations."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def run_worker(settings: Settings) -> None:
    """Run a worker in the foreground until SIGINT/SIGTERM (faust stops gracefully, flushing and committing)."""
    settings = asyncio.run(settings_for_topic(settings))
    app, _ = build_worker(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    freeze.install(settings.data_dir, app.conf.broker_session_timeout, app.conf.broker_heartbeat_interval)
    asyncio.run(prepare_kafka(settings, changelog_topics(app)))
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True, redirect_stdouts=False)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    tune_garbage_collector()
    worker.execute_from_commandline()
