"""A campaign that targets segments (issue 12, item 4) cannot be backtested on an event log."""

from __future__ import annotations

import pandas as pd
import pytest

from service.errors import DataError
from service.offers.campaigns import Campaign
from training.backtest import run_backtest

T0 = pd.Timestamp("2026-11-20 08:00", tz="UTC")


@pytest.mark.parametrize(
    "fields", [{"exclude_segments": ["mercenary"]}, {"audience": ["new", "unknown"]}]
)
def test_a_campaign_targeting_segments_cannot_be_backtested_and_says_why(
    fields: dict[str, list[str]],
) -> None:
    log = pd.DataFrame([{"user_id": "u1", "type": "view", "timestamp": T0, "item_id": "i1"}] * 11)
    with pytest.raises(DataError, match="targets segments"):
        run_backtest(Campaign.model_validate(fields), log)
