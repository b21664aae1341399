"""The fair being replayed: the Bac Giang OCOP fair on TikTok Shop, 24 June 2023, 09:00-13:45 (UTC+7).

Reported figures (Bac Giang provincial portal): 40 creators, 26 livestreams, nearly 1.7 million views,
5,182 orders, 1.2 billion VND revenue; products such as Luc Ngan lychee, Chu rice noodles and cordyceps.

A :class:`FairProfile` holds those totals, the product catalogue and the ratio knobs of the synthetic replay.
Totals are *exact targets*: the generator emits exactly ``views`` view events and exactly ``paid_orders``
paid orders whose amounts sum to exactly ``gmv_vnd``. Money is integer VND; ratios are plain floats.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Final

ICT: Final = timezone(timedelta(hours=7), "ICT")
"""Indochina Time (UTC+7), the fair's local time zone."""

MAX_ORDER_VND: Final = 10_000_000_000
"""Largest amount one order may carry (the schema's ``Vnd`` upper bound)."""

MIN_STREAM_MINUTES: Final = 45
"""Shortest livestream the generator schedules."""

LATEST_START_BEFORE_END_MINUTES: Final = 75
"""The last livestream starts this long before the fair ends (12:30 for a 13:45 end)."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)


@dataclass(frozen=True)
class Product:
    """A product on sale: ``price_vnd`` is the unit price in integer VND; ``popularity`` a relative pick weight."""

    product_id: str
    name: str
    price_vnd: int
    popularity: int = 10


OCOP_CATALOGUE: Final[tuple[Product, ...]] = (
    Product("vai-luc-ngan-3kg", "Luc Ngan lychee (vai thieu), 3 kg box", 129_000, 30),
    Product("vai-luc-ngan-5kg", "Luc Ngan lychee (vai thieu), 5 kg box", 199_000, 14),
    Product("my-chu-2kg", "Chu rice noodles (my Chu), 2 kg pack", 150_000, 16),
    Product("dong-trung-ha-thao-50g", "Cordyceps militaris, dried, 50 g jar", 480_000, 8),
    Product("ga-doi-yen-the", "Yen The hill chicken, whole, about 2 kg", 320_000, 6),
    Product("mat-ong-luc-ngan-1l", "Luc Ngan lychee-flower honey, 1 l", 250_000, 6),
    Product("vai-say-kho-1kg", "Luc Ngan dried lychee, 1 kg", 180_000, 8),
    Product("ruou-lang-van-2l", "Van village rice wine, 2 l", 200_000, 3),
    Product("banh-da-ke-20", "Ke sesame rice crackers, 20 pieces", 60_000, 5),
    Product("banh-da-tho-ha-1kg", "Tho Ha rice paper, 1 kg", 45_000, 4),
)
"""About ten OCOP products of Bac Giang with 2023 TikTok Shop-like prices (mean paid order near 231,600 VND)."""


@dataclass(frozen=True)
class FairProfile:
    """Exact targets and ratio knobs of one replayed fair. Validated on construction (``ValueError``)."""

    campaign: str = "ocop-bac-giang-2023"
    fair_date: date = date(2023, 6, 24)
    tz: timezone = ICT
    start: time = time(9, 0)
    end: time = time(13, 45)
    livestreams: int = 26
    creators: int = 40
    views: int = 1_700_000
    paid_orders: int = 5_182
    gmv_vnd: int = 1_200_000_000
    products: tuple[Product, ...] = OCOP_CATALOGUE
    comments_per_view: float = 0.05
    """Expected comment events per view."""
    like_events_per_view: float = 0.15
    """Expected like events (bursts of 1..30 taps) per view."""
    shares_per_view: float = 0.005
    """Expected share events per view."""
    add_to_carts_per_paid_order: float = 3.0
    """Expected add-to-cart events per paid order (carts of placed orders plus abandoned carts)."""
    cancelled_share: float = 0.06
    """Share of placed orders that end cancelled instead of paid."""
    refunded_share: float = 0.01
    """Share of paid orders that later get a refund (still counted as paid and in GMV)."""
    unique_viewer_share: float = 0.68
    """Target ratio of distinct viewers to views (people rewatch and hop between streams)."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def start_dt(self) -> datetime:
        """Fair start, timezone-aware local time."""
        return datetime.combine(self.fair_date, self.start, tzinfo=self.tz)

    @property
    def end_dt(self) -> datetime:
        """Fair end (exclusive), timezone-aware local time."""
        return datetime.combine(self.fair_date, self.end, tzinfo=self.tz)

    @property
    def start_ms(self) -> int:
        """Fair start, epoch milliseconds (inclusive)."""
        return (self.start_dt - _EPOCH) // _MS

    @property
    def end_ms(self) -> int:
        """Fair end, epoch milliseconds (exclusive)."""
        return (self.end_dt - _EPOCH) // _MS

    @property
    def minutes(self) -> int:
        """Length of the fair in whole minutes."""
        return (self.end_ms - self.start_ms) // 60_000

    @property
    def co_hosted(self) -> int:
        """How many livestreams have two hosts (every creator hosts exactly one livestream)."""
        return self.creators - self.livestreams

    def validate(self) -> None:
        """Raise ``ValueError`` when the generator cannot meet these targets exactly."""
        if not self.campaign:
            raise ValueError("campaign must be non-empty")
        span = self.end_ms - self.start_ms
        if span % 60_000 or self.start_ms % 60_000:
            raise ValueError("fair start and end must fall on whole minutes")
        if span < LATEST_START_BEFORE_END_MINUTES * 60_000:
            raise ValueError(f"the fair must last at least {LATEST_START_BEFORE_END_MINUTES} minutes")
        if self.livestreams < 1:
            raise ValueError("at least one livestream is needed")
        if not self.livestreams <= self.creators <= 2 * self.livestreams:
            raise ValueError("creators must be between livestreams and 2 * livestreams (one or two hosts each)")
        if self.livestreams > 99:
            raise ValueError("at most 99 livestreams")
        if self.views < 2 * self.livestreams:
            raise ValueError(f"{self.views} views cannot give every one of {self.livestreams} livestreams 2 views")
        if self.paid_orders < 1:
            raise ValueError("at least one paid order is needed")
        if self.gmv_vnd < self.paid_orders:
            raise ValueError(f"GMV {self.gmv_vnd} VND cannot give each of {self.paid_orders} paid orders >= 1 VND")
        if self.gmv_vnd > self.paid_orders * MAX_ORDER_VND:
            raise ValueError(f"GMV {self.gmv_vnd} VND needs orders above {MAX_ORDER_VND} VND each")
        if not self.products:
            raise ValueError("the product catalogue is empty")
        if len({p.product_id for p in self.products}) != len(self.products):
            raise ValueError("product ids must be unique")
        for p in self.products:
            if not p.product_id or not 1 <= p.price_vnd <= MAX_ORDER_VND // 10 or p.popularity < 1:
                raise ValueError(f"bad product {p!r}")
        for name in ("comments_per_view", "like_events_per_view", "shares_per_view"):
            if not 0.0 <= getattr(self, name) <= 0.9:
                raise ValueError(f"{name} must be in [0, 0.9]")
        if not 0.0 <= self.cancelled_share < 1.0 or not 0.0 <= self.refunded_share <= 1.0:
            raise ValueError("cancelled_share must be in [0, 1) and refunded_share in [0, 1]")
        if self.add_to_carts_per_paid_order < 0.0:
            raise ValueError("add_to_carts_per_paid_order must be >= 0")
        if not 0.1 <= self.unique_viewer_share <= 0.85:
            raise ValueError("unique_viewer_share must be in [0.1, 0.85]")


OCOP_FAIR: Final = FairProfile()
"""The real fair, at full size."""


def scaled(profile: FairProfile, scale: float) -> FairProfile:
    """``profile`` with views, paid orders and GMV multiplied by ``scale`` (rounded; at least one paid order).

    Livestreams and creators stay as they are. Raises ``ValueError`` for ``scale <= 0`` or when the scaled
    counts cannot be generated exactly (e.g. fewer than 2 views per livestream).
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be > 0, got {scale!r}")
    return dataclasses.replace(
        profile,
        views=round(profile.views * scale),
        paid_orders=max(1, round(profile.paid_orders * scale)),
        gmv_vnd=round(profile.gmv_vnd * scale),
    )
