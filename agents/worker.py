"""Builds a worker: the faust app with every agent, timer and web view registered, ready to run."""

from __future__ import annotations

import asyncio
import logging

import faust

from agents import api, board, campaign, fold, freeze, metrics, redis_mirror
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
    return app, live


def run_worker(settings: Settings) -> None:
    """Run a worker in the foreground until SIGINT/SIGTERM (faust stops gracefully, flushing and committing)."""
    settings = asyncio.run(settings_for_topic(settings))
    app, _ = build_worker(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    freeze.install(settings.data_dir, app.conf.broker_session_timeout, app.conf.broker_heartbeat_interval)
    asyncio.run(prepare_kafka(settings, changelog_topics(app)))
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True, redirect_stdouts=False)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    worker.execute_from_commandline()
