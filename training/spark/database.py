"""The service's purchase events read by Spark over JDBC, partitioned by event id.

Spark's own JDBC source (``spark.read.jdbc``) with PostgreSQL's driver (Debian's
``libpostgresql-jdbc-java``, ``/usr/share/java/postgresql.jar``): every executor reads one
range of ``events.id``, so no process holds the whole log, and the rows are the columns of
``training.data.database.load_database_purchases``, cleaned by the generic rules. Chosen over
reading ranges with psycopg in Python workers: one maintained reader, typed columns, and the
same code path for a cluster. PostgreSQL only (the service's production database); erased
users (the service's tombstones) are left out as the pandas engine does.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from service.errors import DataError
from service.money import SCALE
from training.data.formats import ColumnMapping
from training.spark.load import SparkPurchases, clean
from training.spark.session import POSTGRES_JDBC_JAR

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

PARTITIONS = 8

_QUERY = """(
    SELECT e.id, e.user_id, e.item_id, e.ts AS timestamp, e.order_id,
           COALESCE(e.quantity, 1) AS quantity,
           COALESCE(e.price, i.price) / {units}.0 AS price,
           i.category, i.name
    FROM events e LEFT JOIN items i ON i.item_id = e.item_id
    WHERE e.type = 'purchase' AND e.item_id IS NOT NULL
) AS purchases"""


def jdbc_target(database_url: str) -> tuple[str, dict[str, str]]:
    """The JDBC URL and connection properties of a ``postgresql://`` URL."""
    parts = urlsplit(database_url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise DataError(
            f"--database-url: the spark engine reads PostgreSQL (postgresql://...), not {scheme}"
        )
    host = parts.hostname or "localhost"
    port = parts.port or 5432
    database = parts.path.lstrip("/") or "postgres"
    properties = {"driver": "org.postgresql.Driver"}
    if parts.username:
        properties["user"] = unquote(parts.username)
    if parts.password:
        properties["password"] = unquote(parts.password)
    query = f"?{parts.query}" if parts.query else ""
    return f"jdbc:postgresql://{host}:{port}/{database}{query}", properties


def read_database_purchases(spark: SparkSession, database_url: str) -> SparkPurchases:
    """The purchase events as cleaned purchases (generic rules, erased users left out)."""
    if not os.path.isfile(POSTGRES_JDBC_JAR):
        raise DataError(
            f"--engine spark --database-url needs PostgreSQL's JDBC driver at {POSTGRES_JDBC_JAR} "
            "(Debian: apt-get install libpostgresql-jdbc-java)"
        )
    url, properties = jdbc_target(database_url)
    table = _QUERY.format(units=10**SCALE)
    try:
        bounds = spark.read.jdbc(
            url, "(SELECT MIN(id) AS lo, MAX(id) AS hi FROM events) AS b", properties=properties
        ).first()
        assert bounds is not None
        if bounds["lo"] is None:
            raise DataError("no purchases: the database has no purchase events yet")
        frame = spark.read.jdbc(
            url,
            table,
            column="id",
            lowerBound=int(bounds["lo"]),
            upperBound=int(bounds["hi"]) + 1,
            numPartitions=PARTITIONS,
            properties=properties,
        )
    except DataError:
        raise
    except Exception as exc:  # the JDBC driver's errors: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read purchases from the database: {first[:200]}") from None
    frame = _without_erased(frame, database_url)
    mapping = ColumnMapping(
        quantity="quantity", price="price", order="order_id", category="category", name="name"
    )
    return clean(frame.drop("id"), mapping, "database purchase events")


def _without_erased(frame: DataFrame, database_url: str) -> DataFrame:
    """``frame`` less every line of a user the service erased (``training.erasure``)."""
    from pyspark.sql import functions as F

    from service.privacy.tombstones import user_hash
    from training.erasure import read_tombstones

    key, hashes = read_tombstones(database_url)
    if key is None or not hashes:
        return frame
    users = [r[0] for r in frame.select("user_id").distinct().toLocalIterator()]
    erased = [u for u in users if user_hash(key, str(u)) in hashes]
    return frame.where(~F.col("user_id").isin(erased)) if erased else frame
