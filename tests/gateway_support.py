"""Test harness for the ingestion gateway: a real ``livestream gateway`` process with a tokens file, and a client."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from stream.ingest import hash_token
from tests.support import free_port, wait_until

CAMPAIGN = "ocop-bac-giang-2023"
TOKEN = "fair-source-token-0123456789abcdef"
"""Allowed the fair's campaign."""
OTHER_TOKEN = "other-source-token-0123456789abcdef"
"""Allowed only the campaign ``other-fair`` and livestreams starting with ``other-``; 5 events/s, burst 10."""


def tokens_toml() -> str:
    return (
        f'[sources.fair]\ntoken_sha256 = "{hash_token(TOKEN)}"\ncampaigns = ["{CAMPAIGN}"]\n\n'
        f'[sources.other]\ntoken_sha256 = "{hash_token(OTHER_TOKEN)}"\ncampaigns = ["other-fair"]\n'
        'channel_prefixes = ["other-"]\nrate_eps = 5\nburst = 10\n'
    )


@dataclass
class GatewayProcess:
    root: Path
    namespace: str
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / f"gateway-{self.port}.log"

    def start(self, wait_ready: bool = True) -> GatewayProcess:
        tokens = self.root / "tokens.toml"
        tokens.write_text(tokens_toml())
        env = dict(os.environ)
        env.update(
            LIVESTREAM_NAMESPACE=self.namespace,
            LIVESTREAM_GATEWAY_PORT=str(self.port),
            LIVESTREAM_GATEWAY_TOKENS_FILE=str(tokens),
            LIVESTREAM_LOG_LEVEL="debug",
            **self.env,
        )
        self.root.mkdir(parents=True, exist_ok=True)
        out = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "livestream", "gateway"], env=env, stdout=out, stderr=out)
        if wait_ready:
            wait_until(lambda: self.status("/readyz") == 200, 60, f"gateway on port {self.port} to be ready")
        return self

    def status(self, path: str) -> int:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:
            return str(response.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
