"""Shared fixtures. Tests outside tests/unit get real Kafka and Redis, started here if they do not answer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Pipeline


@pytest.fixture(scope="session")
def services() -> None:
    from livestream import services as local_services

    local_services.up()


@pytest.fixture
def pipeline(services: None, tmp_path: Path) -> Iterator[Pipeline]:
    """A fresh namespace on the real services; its workers are stopped, its Redis keys and topics removed afterwards
    (kept for a post-mortem when ``LIVESTREAM_TEST_KEEP_TOPICS`` is set)."""
    pipe = Pipeline(root=tmp_path)
    pipe.prepare()
    try:
        yield pipe
    finally:
        pipe.stop_all()
        pipe.cleanup_redis()
        if not os.environ.get("LIVESTREAM_TEST_KEEP_TOPICS"):
            pipe.cleanup_topics()
