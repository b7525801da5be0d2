"""The trainer honours the service's erasures: erased users' purchases are left out.

The tombstones (keyed hashes, ``service.privacy``) live in the service's database, so they are
read whenever a run has a database URL: when training from the database, and when training
from files with ``--database-url``. A run from files alone has no database to ask; a shop that
erases users and trains from exports passes ``--database-url`` too (see the README).

The user's views and add-to-carts need no filter of their own: the weaker signals only keep
users with purchases in the run (``training.signals``).
"""

from __future__ import annotations

import dataclasses
import logging

from service.errors import DataError
from service.privacy.tombstones import user_hash
from training.data.formats import Purchases

log = logging.getLogger(__name__)

DROP_REASON = "erased_users"


def read_tombstones(database_url: str) -> tuple[bytes | None, set[str]]:
    """The installation's key and every erased user's hash.

    Raises:
        DataError: the database cannot be read or lacks the tables of migration 0004.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from service.db import make_engine
    from service.privacy.repository import read_key
    from service.privacy.repository import read_tombstones as rows

    try:
        engine = make_engine(database_url)
    except Exception as exc:  # a malformed URL
        raise DataError(f"--database-url: {exc}") from None
    try:
        with engine.connect() as conn:
            return read_key(conn), {h for _, h in rows(conn)}
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise DataError(
            f"cannot read erased users from the database (run `recoffer migrate`): {first}"
        ) from None
    finally:
        engine.dispose()


def without_erased(purchases: Purchases, key: bytes | None, hashes: set[str]) -> Purchases:
    """``purchases`` less every line of an erased user; the report counts them as dropped.

    Raises:
        DataError: nothing is left once erased users are taken out.
    """
    if key is None or not hashes:
        return purchases
    frame = purchases.frame
    erased = [u for u in frame["user_id"].unique() if user_hash(key, str(u)) in hashes]
    if not erased:
        return purchases
    gone = frame["user_id"].isin(erased)
    kept = frame.loc[~gone].reset_index(drop=True)
    if not len(kept):
        raise DataError("no purchases left once erased users are left out")
    items = purchases.items
    items = items.loc[items["item_id"].isin(kept["item_id"].unique())].reset_index(drop=True)
    report = dataclasses.replace(
        purchases.report,
        dropped={**purchases.report.dropped, DROP_REASON: int(gone.sum())},
        rows_kept=len(kept),
        users=int(kept["user_id"].nunique()),
        items=int(kept["item_id"].nunique()),
        start=kept["timestamp"].iloc[0],
        end=kept["timestamp"].iloc[-1],
    )
    log.info("erased users left out: %d users, %d purchase lines", len(erased), int(gone.sum()))
    return Purchases(frame=kept, items=items, report=report)


def honour_erasures(purchases: Purchases, database_url: str | None) -> Purchases:
    """The one hook of the pipeline's loading: without a database URL, nothing to honour."""
    if database_url is None:
        return purchases
    return without_erased(purchases, *read_tombstones(database_url))
