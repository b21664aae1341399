"""The Redis key layout of the serving layer: written by :mod:`agents.redis_mirror`, read by the board, the query
API, ``livestream status``/readback and the bench. A published contract, like the Kafka schemas beside it.

Key layout (``P`` = ``<namespace>:``); ``<c>`` is a campaign and ``<id>`` a livestream id, each written through
:func:`key_part`:

- ``P campaigns`` set of campaigns; ``P campaign:<c>:channels`` / ``:creators`` sets; ``:gmv`` zset channel -> GMV;
  ``:viewers`` HyperLogLog of the campaign's viewers;
- ``P channel:<id>`` hash of stream-to-date counters and gauges, with ``state_partition`` and ``state_offset``
  (the events partition of the livestream's state and the offset of the last record it applied: a write of an
  older state never replaces a newer one, see :mod:`agents.redis_mirror`); ``P channel:<id>:viewers`` HyperLogLog;
- ``P channel:<id>:w1m:<start_ms>`` hash of one 1-minute window (``final`` 0 while open, 1 once closed; an open
  window carries ``state_partition``/``state_offset`` too, and a final one is never written back to open);
  ``P channel:<id>:w5m:<start_ms>`` the final 5-minute hopping windows;
- ``P campaign:<c>:w1m:<start_ms>`` hash of one final campaign window (``livestreams``, counters), indexed by
  start in the zset ``P campaign:<c>:windows``;
- ``P alerts:active`` hash ``<rule>|<subject>`` -> JSON :class:`~schemas.alerts.AlertRecord` of every active alert
  (subject: livestream, or campaign for ``gmv_milestone``); a resolved alert's field is deleted.
- ``P alerts:history`` hash ``alert_id`` -> JSON of the alert's firing record; once the mirror sees the alert
  resolved, ``status`` is ``resolved`` and ``resolved_at_ms`` the event time of the resolution (the ``at_ms`` of
  its record on the alerts topic; the livestream's newest event time if the resolving worker was not this one, and
  ``null`` for campaign alerts). Expires ``WINDOW_TTL_S`` after its last write.
- ``P mirror:<instance>`` string, one per running worker's mirror (a random instance id), refreshed with a one-day
  expiry: a mirror that finds its own key gone knows Redis lost data (a restart without its files, ``FLUSHALL``,
  eviction) and writes everything it holds again.

Ids are any string of 1..128 characters (:mod:`schemas.events`), so inside keys they are escaped: ``%``, ``:``,
``{``, ``}`` and every character outside printable ASCII (spaces, newlines, ``ü``, ...) become ``%XX`` per UTF-8
byte; every other character stays. An escaped id contains no ``:``, so a key's ``:``-separated parts are exactly
the literal words above and the escaped ids, and the escaping is reversible (:func:`parse_key_part`): two distinct
ids, or two key families, never give the same key. Ordinary ids read as themselves (``P channel:ch-01:viewers``);
livestream ``a:viewers`` has the hash ``P channel:a%3Aviewers`` while livestream ``a`` has the HyperLogLog
``P channel:a:viewers``; ``ü:ñ`` -> ``P channel:%C3%BC%3A%C3%B1``; ``{x}`` -> ``P channel:%7Bx%7D`` (no id can
set a Redis Cluster hash tag). The namespace is not escaped: it names Kafka topics too, so it has no ``:``.

Alert fields need no escaping: rule names are a fixed set of words without ``|`` (:data:`stream.alerts.RULES`),
so ``<rule>|<subject>`` splits back at its first ``|`` whatever the subject holds (:func:`split_alert_field`).
Members (channel ids in ``:channels`` and ``:gmv``, creators, campaigns) are stored as they are.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any, Literal

WINDOW_TTL_S = 7 * 86_400
"""Window hashes and alert history expire this long after their last write."""

_ESCAPED = re.compile(r"[^\x21-\x24\x26-\x39\x3b-\x7a\x7c\x7e]+")
"""Runs of characters :func:`key_part` escapes: all but printable ASCII other than ``%``, ``:``, ``{`` and ``}``."""


def _percent(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8", "surrogatepass"))


def key_part(value: str) -> str:
    """``value`` (an id) as one ``:``-separated part of a Redis key: ``%``, ``:``, ``{``, ``}`` and every character
    outside printable ASCII are written ``%XX`` per UTF-8 byte, the rest is kept (``a:b c`` -> ``a%3Ab%20c``)."""
    return _ESCAPED.sub(_percent, value) if _ESCAPED.search(value) else value


def parse_key_part(part: str) -> str:
    """The id :func:`key_part` escaped into ``part``."""
    return urllib.parse.unquote(part, errors="surrogatepass")


CampaignSet = Literal["channels", "creators", "gmv", "viewers", "windows"]


class RedisKeys:
    """Every Redis key of the serving layer (layout in the module docstring)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def campaigns(self) -> str:
        return f"{self.prefix}campaigns"

    def campaign(self, campaign: str, what: CampaignSet) -> str:
        return f"{self.prefix}campaign:{key_part(campaign)}:{what}"

    def channel(self, channel_id: str) -> str:
        return f"{self.prefix}channel:{key_part(channel_id)}"

    def channel_viewers(self, channel_id: str) -> str:
        return f"{self.prefix}channel:{key_part(channel_id)}:viewers"

    def window(self, channel_id: str, start_ms: int, size_ms: int = 60_000) -> str:
        return f"{self.prefix}channel:{key_part(channel_id)}:w{size_ms // 60_000}m:{int(start_ms)}"

    def campaign_window(self, campaign: str, start_ms: int) -> str:
        return f"{self.prefix}campaign:{key_part(campaign)}:w1m:{int(start_ms)}"

    def active_alerts(self) -> str:
        return f"{self.prefix}alerts:active"

    def alert_history(self) -> str:
        return f"{self.prefix}alerts:history"

    def mirror_marker(self, instance: str) -> str:
        return f"{self.prefix}mirror:{key_part(instance)}"


def alert_field(rule: str, subject: str) -> str:
    """The field of an active alert in ``P alerts:active``: ``rule|subject`` (rule names contain no ``|``)."""
    return f"{rule}|{subject}"


def split_alert_field(field: str) -> tuple[str, str]:
    """``(rule, subject)`` of an :func:`alert_field`: split at the first ``|``; the subject may hold any ``|``."""
    rule, _, subject = field.partition("|")
    return rule, subject


TEXT_FIELDS = frozenset({"channel_id", "campaign", "creators", "active_alerts"})
"""Fields of :func:`channel_hash` that hold text (ids), never parsed as numbers: livestream ``42`` stays ``"42"``."""
_INTEGER = re.compile(r"-?[0-9]+")


def parse_hash(raw: dict[Any, Any]) -> dict[str, Any]:
    """A hash the mirror wrote, as read back: names and values decoded, integer fields as ``int``, ids as ``str``."""
    fields = {_text(k): _text(v) for k, v in raw.items()}
    return {k: int(v) if k not in TEXT_FIELDS and _INTEGER.fullmatch(v) else v for k, v in fields.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
