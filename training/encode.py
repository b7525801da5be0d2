"""The trainer's working encoding: shop ids to integer codes, and the smallest age.

Shared by the fitted components (``training.models``) and the weaker signals
(``training.signals``), so neither imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MIN_AGE_DAYS = 1.0 / 1440.0  # one minute: keeps ages strictly positive in sparse storage


@dataclass(frozen=True)
class IdMaps:
    """The shop's string ids; a code is a position in these indexes."""

    users: pd.Index
    items: pd.Index


def encode(frame: pd.DataFrame) -> tuple[pd.DataFrame, IdMaps]:
    """Integer codes for users, items and orders: the trainer's compact working frame.

    String ids are factorised once here; every later stage slices and groups integers.
    Returns (frame with columns user, item, order, timestamp, quantity (1.0 when the input
    has none); the id maps).
    """
    user_codes, user_ids = pd.factorize(frame["user_id"])
    item_codes, item_ids = pd.factorize(frame["item_id"])
    order_codes, _ = pd.factorize(frame["order_id"])
    coded = pd.DataFrame(
        {
            "user": user_codes.astype(np.int32),
            "item": item_codes.astype(np.int32),
            "order": order_codes.astype(np.int64),
            "timestamp": frame["timestamp"].to_numpy(dtype="datetime64[ns]"),
            "quantity": (
                frame["quantity"].to_numpy(dtype=np.float32)
                if "quantity" in frame
                else np.ones(len(frame), dtype=np.float32)
            ),
        }
    )
    return coded, IdMaps(users=pd.Index(user_ids), items=pd.Index(item_ids))
