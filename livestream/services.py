"""Local real services (Kafka KRaft broker, Redis) through the scripts in ``deploy/local``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL = REPO_ROOT / "deploy" / "local"
SERVICES = ("kafka", "redis")


def _env(kafka_port: int | None = None, redis_port: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if kafka_port is not None:
        env["LIVESTREAM_KAFKA_PORT"] = str(kafka_port)
    if redis_port is not None:
        env["LIVESTREAM_REDIS_PORT"] = str(redis_port)
    return env


def run_script(service: str, action: str, kafka_port: int | None = None, redis_port: int | None = None) -> int:
    """Run ``deploy/local/<service>.sh <action>``; returns its exit code (output goes to this process's)."""
    script = LOCAL / f"{service}.sh"
    return subprocess.call([str(script), action], env=_env(kafka_port, redis_port))


def up(kafka_port: int | None = None, redis_port: int | None = None) -> None:
    for service in SERVICES:
        if run_script(service, "start", kafka_port, redis_port) != 0:
            raise RuntimeError(f"{service} did not start; see the lines above")


def down(kafka_port: int | None = None, redis_port: int | None = None) -> None:
    for service in reversed(SERVICES):
        run_script(service, "stop", kafka_port, redis_port)


def status(kafka_port: int | None = None, redis_port: int | None = None) -> bool:
    return all(run_script(s, "status", kafka_port, redis_port) == 0 for s in SERVICES)
