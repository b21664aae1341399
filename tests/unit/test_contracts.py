"""The data contracts page (docs/contracts.md) states what the code does: its dead-letter reasons are the code's."""

from __future__ import annotations

import re
from pathlib import Path

from schemas.events import MAX_BATCH_EVENTS, MAX_JSON_DEPTH, MAX_RECORD_BYTES
from stream.decode import DEAD_LETTER_REASONS

PAGE = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def test_the_page_lists_exactly_the_dead_letter_reasons_of_the_code() -> None:
    text = PAGE.read_text()
    table = text.split("<!-- reasons:start -->")[1].split("<!-- reasons:end -->")[0]
    listed = re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.MULTILINE)
    assert listed == list(DEAD_LETTER_REASONS)


def test_the_page_states_the_limits_of_the_code() -> None:
    text = PAGE.read_text()
    assert MAX_RECORD_BYTES == 4 * 1024 * 1024 and "4 MiB" in text
    assert f"{MAX_JSON_DEPTH} levels" in text
    assert f"{MAX_BATCH_EVENTS:,}" in text


def test_the_readme_links_the_page() -> None:
    readme = (PAGE.parents[1] / "README.md").read_text()
    assert "docs/contracts.md" in readme
