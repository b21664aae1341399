#!/usr/bin/env bash
# System packages the test suite uses besides Kafka and Redis: Prometheus (promtool) for rule tests and real scrapes,
# Chromium for the ops board test, Alertmanager (amtool) to check the example Alertmanager configuration,
# docker-compose (checks deploy/compose.yaml without a Docker engine), Java's keytool (the SASL_SSL Kafka test).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
need=()
command -v prometheus >/dev/null && command -v promtool >/dev/null || need+=(prometheus)
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
command -v amtool >/dev/null || need+=(prometheus-alertmanager)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v keytool >/dev/null || need+=(openjdk-17-jre-headless)
[ ${#need[@]} -eq 0 ] || "$here/apt-install.sh" "${need[@]}"
