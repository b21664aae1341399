"""``livestream``: the command-line tool (services, worker, replay, demo, bench, stats, alerts, schemas, dlq).

Settings come from ``LIVESTREAM_*`` environment variables, overridden by the global flags below; they are built
once here and passed down.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from stream.settings import Settings

app = typer.Typer(
    help="Livestream commerce event stream processor: exact live counters for live-shopping fairs.",
    no_args_is_help=True,
    add_completion=False,
)
services_app = typer.Typer(help="Local real services: Kafka (KRaft) and Redis.", no_args_is_help=True)
app.add_typer(services_app, name="services")
dlq_app = typer.Typer(help="Dead letters: records that could not be decoded or validated.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
gateway_app = typer.Typer()
app.add_typer(gateway_app, name="gateway")


class _State:
    overrides: dict[str, Any] = {}

    @classmethod
    def settings(cls, **more: Any) -> Settings:
        return Settings(**{**cls.overrides, **more})


@app.callback()
def _global(
    kafka: Annotated[
        str | None, typer.Option(help="Kafka bootstrap host:port (env LIVESTREAM_KAFKA_BOOTSTRAP)")
    ] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL (env LIVESTREAM_REDIS_URL)")] = None,
    namespace: Annotated[
        str | None, typer.Option(help="prefix of topics, consumer group, Redis keys (env LIVESTREAM_NAMESPACE)")
    ] = None,
    web_port: Annotated[int | None, typer.Option(help="worker HTTP port (env LIVESTREAM_WEB_PORT)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="worker state dir (env LIVESTREAM_DATA_DIR)")] = None,
    partitions: Annotated[int | None, typer.Option(help="events topic partitions (env LIVESTREAM_PARTITIONS)")] = None,
) -> None:
    given = {
        "kafka_bootstrap": kafka,
        "redis_url": redis_url,
        "namespace": namespace,
        "web_port": web_port,
        "data_dir": data_dir,
        "partitions": partitions,
    }
    _State.overrides = {k: v for k, v in given.items() if v is not None}


@services_app.command("up")
def services_up() -> None:
    """Start Kafka and Redis on 127.0.0.1 (fetching Kafka's jars on first use); no-op for those that answer."""
    from livestream import services

    services.up()


@services_app.command("down")
def services_down() -> None:
    """Stop the local Kafka and Redis started by `services up`."""
    from livestream import services

    services.down()


@services_app.command("status")
def services_status() -> None:
    """Say whether Kafka and Redis answer; exit 1 if one does not."""
    from livestream import services

    raise typer.Exit(0 if services.status() else 1)


@app.command()
def worker() -> None:
    """Run a processing worker (faust) in the foreground: fold events, mirror to Redis, serve /metrics.

    Configured by LIVESTREAM_* environment variables (and the global options before the command):
    `livestream settings` lists every one with its default, its current value and what it does."""
    from agents.worker import run_worker

    sys.argv = [sys.argv[0], "worker"]  # faust parses argv; our flags are already applied
    run_worker(_State.settings())


@app.command()
def replay(
    scale: Annotated[
        float, typer.Option(help="scale every count of the fair by this factor (totals stay exact)")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="random seed: same seed, same events")] = 7,
    speed: Annotated[float, typer.Option(help="0 = as fast as possible, N = N times real time")] = 0.0,
    batch: Annotated[int, typer.Option(help="events per batch envelope record (1 = one event per record)")] = 500,
    via: Annotated[
        str | None, typer.Option(help="send through the ingestion gateway at this URL (e.g. http://127.0.0.1:8080)")
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="bearer token for --via", envvar="LIVESTREAM_GATEWAY_TOKEN", show_default=False)
    ] = None,
    connections: Annotated[int, typer.Option(help="concurrent connections to the gateway (--via)")] = 8,
    partitioner: Annotated[
        str,
        typer.Option(
            help="how records are placed: murmur2 (Java, aiokafka: each on its livestream's home partition) or "
            "crc32 (librdkafka's default, as kcat and confluent-kafka place them)"
        ),
    ] = "murmur2",
) -> None:
    """Replay the OCOP fair into the events topic; the last line is the oracle (expected totals) as JSON.

    With --via, the fair goes through the ingestion gateway as NDJSON requests of --batch events."""
    from livestream.producer import PARTITIONERS

    if partitioner not in PARTITIONERS:
        raise typer.BadParameter(f"one of {', '.join(PARTITIONERS)}", param_hint="--partitioner")
    from livestream.producer import replay_fair

    settings = _State.settings()
    if via is not None:
        if not token:
            raise typer.BadParameter("--via needs --token (or LIVESTREAM_GATEWAY_TOKEN)", param_hint="--token")
        from livestream.gateway_client import replay_via_gateway
        from livestream.producer import progress_printer
        from stream.replay.profile import OCOP_FAIR, scaled

        profile = scaled(OCOP_FAIR, scale) if scale != 1.0 else OCOP_FAIR
        minutes = (profile.end_ms - profile.start_ms) // 60_000
        sent = asyncio.run(
            replay_via_gateway(
                via,
                token,
                profile,
                seed,
                batch=batch,
                connections=connections,
                speed=speed,
                on_minute=progress_printer(minutes),
            )
        )
        line = {
            **sent.oracle.summary(),
            "events": sent.events,
            "requests": sent.requests,
            "retries": sent.retries,
            "produce_seconds": round(sent.seconds, 3),
        }
        print(json.dumps(line))
        return

    async def run() -> None:
        result = await replay_fair(
            settings, scale=scale, seed=seed, batch=batch, speed=speed, progress=True, partitioner=partitioner
        )
        line = {
            **result.oracle.summary(),
            "events": result.events,
            "records": result.records,
            "produce_seconds": round(result.seconds, 3),
        }
        print(json.dumps(line))

    asyncio.run(run())


@app.command()
def demo(
    once: Annotated[
        bool, typer.Option(help="print one JSON line of totals and exit 0 only if they equal the oracle")
    ] = False,
    scale: Annotated[float, typer.Option(help="scale of the fair (1.0 = the real OCOP fair)")] = 1.0,
    seed: Annotated[int, typer.Option(help="replay seed")] = 7,
    batch: Annotated[int, typer.Option(help="events per batch envelope (1 = single events)")] = 500,
    speed: Annotated[float, typer.Option(help="0 = as fast as possible, N = N times real time")] = 0.0,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the pipeline to catch up")] = 900.0,
    via_gateway: Annotated[
        bool, typer.Option("--via-gateway", help="start an ingestion gateway too and send the fair through it")
    ] = False,
) -> None:
    """Services up, a worker, the full fair replayed, then live counters read back from Redis and /metrics."""
    from livestream.demo import run_demo

    raise typer.Exit(
        run_demo(
            _State.overrides,
            once=once,
            scale=scale,
            seed=seed,
            batch=batch,
            speed=speed,
            timeout=timeout,
            via_gateway=via_gateway,
        )
    )


@app.command()
def bench(
    scale: Annotated[float, typer.Option(help="fair scale of the single-event topic (0.1 = ~373k events)")] = 0.1,
    batch_scale: Annotated[float, typer.Option(help="fair scale of the batch-envelope topic")] = 0.5,
    batch: Annotated[int, typer.Option(help="events per batch envelope (batch topic and the full fair)")] = 500,
    seed: Annotated[int, typer.Option(help="replay seed")] = 7,
    skip: Annotated[
        list[str] | None,
        typer.Option(
            help="skip a step (repeatable): drain, passthrough, quix, single, crc32, batch, latency, memory, fair, "
            "scaling, takeover, gateway"
        ),
    ] = None,
    latency_seconds: Annotated[float, typer.Option(help="how long to send events for the latency step")] = 20.0,
    latency_load: Annotated[float, typer.Option(help="latency rate as a fraction of the single-event rate")] = 0.5,
    latency_rate: Annotated[
        float | None, typer.Option(help="fixed latency rate in events/s (default: load x single-event rate)")
    ] = None,
    memory_sizes: Annotated[str, typer.Option(help="active livestreams per memory step, comma-separated")] = (
        "1000,10000,100000"
    ),
    fair_scale: Annotated[float, typer.Option(help="scale of the full fair replay step")] = 1.0,
    gateway_scale: Annotated[float, typer.Option(help="scale of the fair sent through the gateway step")] = 0.3,
    keep: Annotated[bool, typer.Option(help="keep the bench namespaces' topics, Redis keys and files")] = False,
    strict: Annotated[bool, typer.Option(help="exit 2 if a measured target is missed")] = False,
) -> None:
    """Benchmark on the local Kafka and Redis: a table, then one JSON line of figures (exit 1 on any miscount)."""
    from livestream.bench.runner import STEPS, BenchOptions, run_bench

    skipped = frozenset(s.strip() for item in skip or [] for s in item.split(",") if s.strip())
    unknown = skipped - set(STEPS)
    if unknown:
        raise typer.BadParameter(f"unknown step(s) {sorted(unknown)}; steps: {', '.join(STEPS)}", param_hint="--skip")
    base = {k: v for k, v in _State.overrides.items() if k in ("kafka_bootstrap", "redis_url")}
    options = BenchOptions(
        scale=scale,
        batch_scale=batch_scale,
        batch=batch,
        seed=seed,
        skip=skipped,
        latency_load=latency_load,
        latency_rate=latency_rate,
        latency_seconds=latency_seconds,
        memory_sizes=tuple(int(n) for n in memory_sizes.split(",") if n.strip()),
        fair_scale=fair_scale,
        gateway_scale=gateway_scale,
        partitions=_State.overrides.get("partitions", 4),
        keep=keep,
        base=base,
    )
    raise typer.Exit(run_bench(options, strict=strict))


@app.command()
def stats(
    campaign: Annotated[str | None, typer.Option(help="campaign (default: every campaign in Redis)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
) -> None:
    """Print live counters per livestream and per campaign, read from Redis."""
    import redis

    from livestream import readback
    from livestream.render import channel_table, console

    settings = _State.settings()
    client = redis.Redis.from_url(settings.redis_url)
    names = [campaign] if campaign else readback.campaigns(client, settings.redis_prefix)
    out: dict[str, Any] = {}
    for name in names:
        channels = readback.read_channels(client, settings.redis_prefix, name)
        totals = readback.read_campaign(client, settings.redis_prefix, name)
        out[name] = {"totals": totals, "channels": channels}
        if not as_json:
            console().print(channel_table(name, channels, totals))
    if as_json:
        print(json.dumps(out))
    elif not names:
        print(f"no campaigns under namespace {settings.namespace!r} in {settings.redis_url}", file=sys.stderr)


@app.command()
def alerts(
    history: Annotated[
        bool, typer.Option("--history", help="every firing/resolved record of the alerts topic, not just active ones")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Operator alerts: active ones from Redis, or (--history) every transition from the alerts topic."""
    from livestream.alerts import show_alerts

    show_alerts(_State.settings(), history=history, as_json=as_json)


@app.command()
def status(
    sort: Annotated[str, typer.Option(help="gmv, orders, viewers (unique), concurrent, views, items or name")] = "gmv",
    ascending: Annotated[bool, typer.Option("--asc", help="smallest first")] = False,
    campaign: Annotated[str | None, typer.Option(help="campaign (default: the one with the most GMV)")] = None,
    once: Annotated[bool, typer.Option("--once", help="render once and exit")] = False,
) -> None:
    """The board's live table in the terminal, from Redis: fair totals, alerts, every livestream (every second)."""
    from livestream.status import SORTS, run_status, with_data

    if sort not in SORTS:
        raise typer.BadParameter(f"one of {', '.join(SORTS)}", param_hint="--sort")
    settings = _State.settings()
    if "namespace" not in _State.overrides and "LIVESTREAM_NAMESPACE" not in os.environ:
        settings = with_data(settings, campaign)
    raise typer.Exit(run_status(settings, campaign=campaign, sort=sort, ascending=ascending, once=once))


@app.command("settings")
def settings_command(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per setting, one per line")] = False,
) -> None:
    """Every setting: its environment variable, default, current value (environment and global options applied)
    and what it does. Secrets (passwords, tokens) are shown as set or not set."""
    from rich.table import Table
    from rich.text import Text

    from livestream.render import console

    current = _State.settings()
    rows = []
    for name, field in Settings.model_fields.items():
        value = getattr(current, name)
        secret = any(word in name for word in ("password", "token", "secret"))
        shown = ("set" if value else "not set") if secret else value
        default = None if secret else field.default
        rows.append(
            {
                "env": f"LIVESTREAM_{name.upper()}",
                "default": str(default) if default is not None else "",
                "value": str(shown) if shown is not None else "",
                "description": field.description or "",
            }
        )
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table(title="settings (environment variables)")
    for column in ("env", "default", "value", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(Text(row[column]) for column in ("env", "default", "value", "description")))
    console().print(table)


@app.command()
def schemas(
    check: Annotated[
        bool, typer.Option(help="exit 1 if schemas/json differs from the models instead of writing")
    ] = False,
) -> None:
    """Generate the JSON Schema files in schemas/json/ from the models."""
    from schemas.generate import write_json_schemas

    stale = write_json_schemas(check=check)
    for path in stale:
        print(f"{'stale' if check else 'wrote'}: {path}")
    raise typer.Exit(1 if check and stale else 0)


@dlq_app.command("inspect")
def dlq_inspect(
    reason: Annotated[str | None, typer.Option(help="only this error reason (e.g. bad_json)")] = None,
    limit: Annotated[int, typer.Option(help="show at most this many, newest last")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """List dead letters with their error, source coordinates and a preview of the value."""
    from collections import Counter

    from livestream.dlq import read_dead_letters

    settings = _State.settings()
    records = asyncio.run(read_dead_letters(settings.kafka_client_options(), settings.dlq_topic, reason))
    shown = records[-limit:] if limit > 0 else records
    if as_json:
        for record in shown:
            print(json.dumps(record.summary()))
        return
    from rich.table import Table

    from livestream.render import console as table_console

    table = Table(title=f"{settings.dlq_topic}: {len(records)} dead letters, showing {len(shown)}")
    for column in ("dlq_offset", "error", "source", "key", "bytes", "message", "value"):
        table.add_column(column)
    for record in shown:
        row = record.summary(40)
        table.add_row(
            *[str(row[c])[:60] for c in ("dlq_offset", "error", "source", "key", "bytes", "message", "value")]
        )
    console = table_console()
    console.print(table)
    console.print(dict(Counter(r.headers.get("error", "") for r in records)))


@dlq_app.command("replay")
def dlq_replay(
    reason: Annotated[str | None, typer.Option(help="only this error reason")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
) -> None:
    """Re-inject dead letters into the events topic (after the cause was fixed); prints how many."""
    from livestream.dlq import read_dead_letters, replay_dead_letters

    settings = _State.settings()
    records = asyncio.run(read_dead_letters(settings.kafka_client_options(), settings.dlq_topic, reason))
    if not records:
        print("no dead letters to replay")
        return
    if not yes:
        typer.confirm(f"re-inject {len(records)} records into {settings.events_topic}?", abort=True)
    count = asyncio.run(replay_dead_letters(settings.kafka_client_options(), records, settings.events_topic))
    print(json.dumps({"replayed": count, "topic": settings.events_topic}))


@gateway_app.callback(invoke_without_command=True)
def gateway(ctx: typer.Context) -> None:
    """HTTP ingestion gateway: POST /v1/events into the events topic.

    `livestream gateway` (no command) runs it in the foreground: LIVESTREAM_GATEWAY_HOST/PORT, sources from
    LIVESTREAM_GATEWAY_TOKENS_FILE and/or LIVESTREAM_GATEWAY_TOKENS (`livestream settings` lists them all)."""
    if ctx.invoked_subcommand is not None:
        return
    from livestream.gateway import run_gateway
    from stream.ingest import TokenError

    try:
        run_gateway(_State.settings())
    except TokenError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None


@gateway_app.command("hash-token")
def gateway_hash_token(
    source: Annotated[str, typer.Option(help="source name for the TOML snippet")] = "my-source",
    campaign: Annotated[list[str] | None, typer.Option(help="campaign the token may send (repeatable)")] = None,
    generate: Annotated[
        bool, typer.Option("--generate", help="make a new random token and print it once (else read it from stdin)")
    ] = False,
) -> None:
    """Print the SHA-256 of a bearer token as a \\[sources.NAME] table for the tokens file.

    The token is read from standard input (never a flag, so it stays out of the shell history and process list),
    or made up with --generate and printed to stderr once: only the hash is stored.
    """
    from stream.ingest import generate_token, hash_token

    if generate:
        token = generate_token()
        print(f"token (give it to the source, it is not stored): {token}", file=sys.stderr)
    else:
        token = sys.stdin.readline().strip()
        if not token:
            print("no token on standard input", file=sys.stderr)
            raise typer.Exit(2)
    campaigns = ", ".join(json.dumps(c) for c in campaign or ["CAMPAIGN"])
    print(f'[sources.{json.dumps(source)}]\ntoken_sha256 = "{hash_token(token)}"\ncampaigns = [{campaigns}]')


def main() -> None:
    from aiokafka.errors import KafkaConnectionError

    from agents.startup import KafkaUnavailableError, check_kafka

    try:
        app()
    except KafkaUnavailableError as exc:
        print(f"livestream: {exc}", file=sys.stderr)
        sys.exit(3)
    except KafkaConnectionError as exc:
        # aiokafka hides the cause ("Unable to bootstrap"): find it with one direct connection.
        message = str(exc)
        try:
            asyncio.run(check_kafka(_State.settings()))
        except KafkaUnavailableError as cause:
            message = str(cause)
        print(f"livestream: {message}", file=sys.stderr)
        sys.exit(3)
