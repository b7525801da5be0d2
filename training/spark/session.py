"""The SparkSession the engine runs in, and the checks of what it needs (pyspark, Java)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from typing import TYPE_CHECKING, cast

import pandas as pd

from service.errors import UsageProblem

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

DEFAULT_MASTER = "local[*]"
INSTALL_HINT = "pip install 'recoffer[spark]'"
# Debian's libpostgresql-jdbc-java: Spark reads the service's PostgreSQL through it
POSTGRES_JDBC_JAR = "/usr/share/java/postgresql.jar"
# shuffle partitions on a local master (Spark's default, 200, is for clusters: on a few cores
# each stage would pay for 200 small tasks); a cluster keeps its own setting
LOCAL_SHUFFLE_PARTITIONS = 8


def pyspark_version() -> str:
    """pyspark's version; UsageProblem (one line, exit 2) naming the extra when it is missing."""
    try:
        import pyspark
    except ImportError:
        raise UsageProblem(f"--engine spark needs pyspark: {INSTALL_HINT}") from None
    return str(pyspark.__version__)


def java_problem() -> str | None:
    """Why Spark cannot start a JVM here, or None when Java is found."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "java"), os.X_OK):
        return None
    if shutil.which("java"):
        return None
    return "--engine spark needs Java 17 or later (no java on PATH and no JAVA_HOME)"


def check_engine() -> str:
    """pyspark's version once pyspark and Java are both there; else UsageProblem (exit 2)."""
    version = pyspark_version()
    problem = java_problem()
    if problem is not None:
        raise UsageProblem(problem)
    return version


def start_session(
    master: str = DEFAULT_MASTER,
    *,
    shuffle_partitions: int | None = None,
    driver_memory: str | None = None,
    jars: list[str] | None = None,
) -> SparkSession:
    """A SparkSession on ``master`` (or the one already running in this process).

    Times are UTC (the trainer's naive timestamps are UTC), the UI is off, Arrow moves
    columns to the driver. ``driver_memory`` only takes effect when this call starts the JVM.
    """
    check_engine()
    import warnings

    # py4j logs each connection it closes at INFO, also from __del__ at interpreter exit, when
    # the streams are closed ("Logging error ... I/O operation on closed file")
    logging.getLogger("py4j").setLevel(logging.WARNING)

    # pyspark 4.3 warns that it does not fully support pandas 3; the engine only moves plain
    # numeric and text columns through Arrow (tested)
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    from pyspark.sql import SparkSession

    # Python workers (the few RDD steps) run this interpreter, not whatever python3 is on PATH
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    partitions = shuffle_partitions
    if partitions is None and master.startswith("local"):
        partitions = LOCAL_SHUFFLE_PARTITIONS
    builder = (
        SparkSession.builder.master(master)
        .appName("recoffer-train")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.ansi.enabled", "false")
    )
    if partitions is not None:
        builder = builder.config("spark.sql.shuffle.partitions", str(partitions))
    if driver_memory is not None:
        builder = builder.config("spark.driver.memory", driver_memory)
    present = [jar for jar in jars or [] if os.path.isfile(jar)]
    if present:
        builder = builder.config("spark.jars", ",".join(present))
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # the JVM did not start: one line, not its stack
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageProblem(f"Spark could not start on {master!r}: {first}") from None
    session.sparkContext.setLogLevel("ERROR")
    return session


def to_pandas(frame: DataFrame) -> pd.DataFrame:
    """``frame`` collected to the driver (through Arrow) as a pandas frame."""
    return cast(pd.DataFrame, frame.toPandas())
