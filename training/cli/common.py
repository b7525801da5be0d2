"""What the commands share: the model root option, logging set-up, the column mapping option."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from training.data.formats import ColumnMapping

ModelDir = Annotated[
    Path,
    typer.Option(
        "--model-dir",
        envvar="RECOFFER_MODEL_DIR",
        help="Model root: versions/ and registry.json live here.",
        file_okay=False,
    ),
]
DEFAULT_MODEL_DIR = Path("var/models")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def parse_columns(text: str | None) -> ColumnMapping | None:
    return ColumnMapping.parse(text) if text else None
