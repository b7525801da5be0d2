"""The typed manifest: what a model version is, written by the trainer, read by everyone else.

``ManifestBody`` is what a trainer describes (data, counts, recipes, figures, gate);
``Manifest`` adds what the writer fills in (schema version, version name, the arrays table).
Every part allows fields it does not know, so a manifest written by a newer trainer loads
here without losing them. Schema version 1 covers every manifest written so far: the first
trainer's (no ``signals``, no ``fold_in``) and every one since; what a later field adds has a
default that means "the old behaviour".
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
)

from service.errors import ArtifactError
from service.scoring import PROTOCOLS, Recipe

SCHEMA_VERSION = 1
READABLE_SCHEMAS = frozenset({1})

Figure = int | float
# a recipe as the trainer has always written it (``Recipe.to_dict``: zero weights left out)
StoredRecipe = Annotated[Recipe, PlainSerializer(Recipe.to_dict, return_type=dict[str, Any])]
# protocol -> candidate -> metric (``ndcg@10``, ``users``, ...) -> value
MetricTable = dict[str, dict[str, dict[str, Figure]]]


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class ArraySpec(_Part):
    """One ``.npy`` file of the version: its checks before anything is served from it."""

    file: str
    dtype: str
    shape: list[int]
    bytes: int
    sha256: str


class DataInfo(_Part):
    """Where the purchases came from and what cleaning did to them."""

    source: str | None = None
    fingerprint: str | None = None
    cleaning: dict[str, Any] = Field(default_factory=dict)


class Counts(_Part):
    """Sizes of the served model."""

    users: int = Field(ge=0)
    items: int = Field(ge=0)
    interactions: int | None = None
    purchases: int | None = None
    factors: int | None = None


class SignalsInfo(_Part):
    """The views and add-to-carts the model learnt from (absent: purchases only)."""

    source: str = "database events"
    weights: dict[str, float] = Field(default_factory=dict)
    view: int = 0
    add_to_cart: int = 0
    ignored_no_purchases: int = 0
    until: datetime | None = None  # the newest signal event read
    pairs: int = 0
    # issue 14: every visitor counts (training.signals). The users and items the events name,
    # those without any purchase apart (rows of the second ALS; the items are served too)
    every_visitor: bool = False
    users: int = 0
    items: int = 0
    users_without_purchases: int = 0
    items_without_purchases: int = 0


class FoldIn(_Part):
    """Constants of the at-request-time fold-in of a new user's events."""

    # a session's events are scaled so one purchase weighs like a typical training interaction
    confidence_scale: float = Field(default=1.0, gt=0, allow_inf_nan=False)


class Figures(_Part):
    """Ranking metrics at k = 10 of every candidate, on the test and the validation split."""

    test: MetricTable
    validation: MetricTable = Field(default_factory=dict)


class SplitInfo(_Part):
    test_days: Figure
    validation_cutoff: datetime
    test_cutoff: datetime
    end: datetime


class GateInfo(_Part):
    """The quality gate's decision on this version."""

    passed: bool
    method: str
    current_version: str | None = None
    ndcg_at_10: dict[str, dict[str, float] | None] = Field(default_factory=dict, alias="ndcg@10")
    reasons: list[str] = Field(default_factory=list)
    forced: bool = False


class EngineInfo(_Part):
    """Which engine built the version (issue 15). A manifest without it: the pandas engine.

    ``name`` is ``pandas`` or ``spark``; ``fit`` the factorisation's library (``implicit``, or
    ``mllib`` for Spark MLlib ALS); ``left_out`` the components this engine does not build
    (Spark: ``ease``), each with a one-line reason.
    """

    name: str = "pandas"
    fit: str = "implicit"
    version: str | None = None  # the engine library's version (pyspark's for spark)
    master: str | None = None  # the Spark master URL the run used
    left_out: dict[str, str] = Field(default_factory=dict)


class EvaluationInfo(_Part):
    """The test users the validation, test and gate figures rest on (issue 15, item 2)."""

    users: int  # test users scored (the seeded sample, or all)
    of_users: int  # test users with a non-empty truth
    seed: int = 0
    chunk_users: int | None = None  # users scored at once (bounded memory)


class FileSpec(_Part):
    """A file of the version other than an array (an ANN index): its checks before use."""

    file: str
    bytes: int
    sha256: str


class AnnIndexInfo(_Part):
    """One approximate nearest-neighbour index: over which item factors, in which file."""

    factor_set: str  # "als" (the item factors) or "als_signals" (signal_item_factors)
    file: str  # its entry in ``Manifest.files``
    items: int
    dims: int


class AnnInfo(_Part):
    """The version's ANN index over item factors (issue 15, item 4; ``service.ann``).

    ``recall_at_10``: per protocol, the share of the exact top 10 of the served recipe that
    ``fetch`` items from each index plus the ``prior_items`` most popular/trending, re-ranked
    exactly, keep; measured at build time on ``recall_users`` of the model's own users.
    """

    library: str
    library_version: str
    metric: str = "ip"
    params: dict[str, int] = Field(default_factory=dict)
    indexes: list[AnnIndexInfo] = Field(default_factory=list)
    fetch: int = 200
    prior_items: int = 200
    recall_at_10: dict[str, float] = Field(default_factory=dict)
    recall_users: int = 0
    build_seconds: float = 0.0
    min_items: int = 0  # the catalogue size from which the trainer builds one


class ManifestBody(_Part):
    """What the trainer says about a model version."""

    created_at: datetime
    reference_time: datetime  # the newest purchase trained on (naive UTC, the trainer's clock)
    counts: Counts
    recipes: dict[str, StoredRecipe]  # protocol -> the served scoring recipe
    served: dict[str, str]  # protocol -> the candidate chosen on the validation split
    metrics: Figures
    data: DataInfo | None = None
    # the trainer's hyper-parameters (``training.models.ModelParams.to_dict()``)
    params: dict[str, Any] = Field(default_factory=dict)
    signals: SignalsInfo | None = None
    fold_in: FoldIn = Field(default_factory=FoldIn)
    candidates: dict[str, dict[str, StoredRecipe]] = Field(default_factory=dict)
    split: SplitInfo | None = None
    tuning: dict[str, Any] | None = None
    gate: GateInfo | None = None
    libraries: dict[str, str] = Field(default_factory=dict)
    engine: EngineInfo = Field(default_factory=EngineInfo)
    evaluation: EvaluationInfo | None = None
    ann: AnnInfo | None = None  # None: no index, every request scores the whole catalogue

    @field_validator("recipes")
    @classmethod
    def _every_protocol(cls, recipes: dict[str, Recipe]) -> dict[str, Recipe]:
        missing = [p for p in PROTOCOLS if p not in recipes]
        if missing:
            raise ValueError(f"no recipe for protocol {', '.join(missing)}")
        return recipes

    @field_validator("served")
    @classmethod
    def _names_every_protocol(cls, served: dict[str, str]) -> dict[str, str]:
        missing = [p for p in PROTOCOLS if p not in served]
        if missing:
            raise ValueError(f"no served candidate named for protocol {', '.join(missing)}")
        return served

    @property
    def trained_at(self) -> datetime:
        """``created_at`` in UTC."""
        return as_utc(self.created_at)

    @property
    def data_until(self) -> datetime:
        """``reference_time`` in UTC."""
        return as_utc(self.reference_time)

    @property
    def regularization(self) -> float:
        """The ALS regularisation the factors were fitted with (fold-in solves with it).

        0.05, ``training.models.ModelParams``' default, for a manifest that records none (the
        service cannot import the trainer's class to ask it).
        """
        return float(self.params.get("regularization", 0.05))

    @property
    def saw_until(self) -> datetime:
        """The newest event of any kind the model learnt from (purchases or signals), UTC."""
        until = self.data_until
        if self.signals is not None and self.signals.until is not None:
            until = max(until, as_utc(self.signals.until))
        return until


class Manifest(ManifestBody):
    """A written version's manifest: the body plus what the writer filled in."""

    schema_version: int
    version: str
    arrays: dict[str, ArraySpec]
    files: dict[str, FileSpec] = Field(default_factory=dict)  # name -> a file beside the arrays


def as_utc(moment: datetime) -> datetime:
    """Manifests store naive UTC times (the trainer's convention) or aware ones."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_manifest(data: object, where: str) -> Manifest:
    """Validate a decoded ``manifest.json``; ArtifactError names the first bad field."""
    if not isinstance(data, dict):
        raise ArtifactError(f"{where}: manifest is not an object")
    schema = data.get("schema_version")
    if schema not in READABLE_SCHEMAS:
        raise ArtifactError(
            f"{where}: schema_version {schema!r}, this build reads {sorted(READABLE_SCHEMAS)}"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first.get("loc", ())) or "manifest"
        if first["type"] == "missing":
            raise ArtifactError(
                f"{where}: manifest field {field!r} is required and missing (see docs/artifact.md)"
            ) from None
        raise ArtifactError(f"{where}: manifest field {field!r}: {first['msg']}") from None


def manifest_json(manifest: Manifest) -> bytes:
    """The bytes of ``manifest.json``."""
    return manifest.model_dump_json(indent=2, by_alias=True).encode()
