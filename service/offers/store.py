"""Campaigns managed at run time: the store every worker and replica reads them from.

The database holds each campaign's current definition (``campaign_definitions``) and an
append-only log of every change (``campaign_changes``: create, update, pause, resume, archive,
with the whole definition after it, who made it and when). A definition is validated by
``Campaign.model_validate``, exactly as the campaigns file is, so a field added to
``Campaign`` is accepted here with no change.

The file and the API (``RECOFFER_CAMPAIGNS_FILE`` stays the way to keep campaigns in version
control):

* at start every worker syncs the file into the store, as actor ``file``: a campaign of the
  file is created, or updated when its table changed; the built-in campaign, when the file
  does not name it, is created once with its defaults (source ``default``) and is the API's
  from then on;
* a campaign of the file is read-only through the API (409 ``campaign_from_file``) except
  pause and resume, the emergency brake, which the file's sync never undoes;
* a campaign removed from the file (or the file removed) is handed over to the API at the next
  start, with its definition and status as they are (an ``update`` by ``file``);
* an archived campaign is final: the file cannot bring it back, the API cannot change it.

Every worker polls the store (``refresh``, in ``service.background``): one cheap probe (the
count and the sum of the versions) and, when it moved, a read of every definition and an
atomic swap of the map in every holder (the engine, the reports and their gauges, evaluation
on a view; sweeps read the engine's). A worker that writes applies its own change at once.
Each campaign in those maps carries its definition version (``version_of``), which every
decision records.
"""

from __future__ import annotations

import logging
import threading
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr, ValidationError

from service.errors import (
    CampaignArchived,
    CampaignExists,
    CampaignFromFile,
    CampaignVersionConflict,
    InvalidInput,
    UnknownCampaign,
)
from service.offers.campaigns import Campaign
from service.offers.repository.store import (
    CampaignRepository,
    CampaignSource,
    CampaignStatus,
    Change,
    ChangeAction,
    ChangeRecord,
    StoredDefinition,
)

log = logging.getLogger(__name__)
FILE_ACTOR = "file"  # the actor of the campaigns file's sync
# a change without an expected version is read and applied again after each change that came
# first (each such loss is another writer's win, so this bounds the writers at once, not time)
RETRIES = 50
# Listener: receives the new map of campaigns (a fresh dict, never changed afterwards)
Listener = Callable[[dict[str, Campaign]], None]
# status -> (action, the status it leads to) for pause, resume and archive
TRANSITIONS: dict[str, CampaignStatus] = {
    "pause": "paused",
    "resume": "active",
    "archive": "archived",
}


class StoredCampaign(Campaign):
    """A campaign as the store serves it: the definition, and its version (a private
    attribute, not a field: validation, ``public()`` and every dump never see it)."""

    _definition_version: int | None = PrivateAttr(None)

    @classmethod
    def of(cls, campaign_id: str, fields: Mapping[str, Any], version: int) -> StoredCampaign:
        """Validated as the file's campaigns are (raises ValidationError), with its version."""
        campaign = cls.model_validate({**fields, "campaign_id": campaign_id})
        campaign._definition_version = version
        return campaign


def version_of(campaign: Campaign | None) -> int | None:
    """The definition version of ``campaign`` (None for one not read from the store)."""
    return campaign._definition_version if isinstance(campaign, StoredCampaign) else None


def file_campaign_ids(path: Path | None) -> list[str]:
    """The campaign ids the file names, in its order (``load_campaigns`` has checked it)."""
    if path is None:
        return []
    with path.open("rb") as handle:
        document = tomllib.load(handle)
    return list(document.get("campaigns", {}))


def given_fields(campaign: Campaign) -> dict[str, Any]:
    """The fields set explicitly, as JSON (what the store keeps: re-validated, it is the same
    campaign, and a default changed by a later release reaches it)."""
    fields = campaign.model_dump(mode="json", exclude_unset=True)
    fields.pop("campaign_id", None)
    return fields


def invalid_fields(exc: ValidationError) -> list[tuple[str, str]]:
    """(field, message) of each error of a definition; ``definition`` for the whole of it."""
    out = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())) or "definition"
        out.append((where, str(error.get("msg", "invalid"))))
    return out


@dataclass(frozen=True)
class CampaignView:
    """A campaign as the API shows it."""

    stored: StoredDefinition
    campaign: Campaign | None  # None: the stored definition no longer validates
    active_now: bool

    @property
    def definition(self) -> dict[str, Any]:
        return self.stored.definition if self.campaign is None else self.campaign.public()


class CampaignStore:
    """The campaigns of the store: changes through the API, the file's sync, the poll."""

    def __init__(
        self,
        repository: CampaignRepository,
        clock: Callable[[], datetime],
        *,
        file_campaigns: Mapping[str, Campaign],
        file_ids: Sequence[str] = (),
    ) -> None:
        self.repository = repository
        self.clock = clock
        self.file_campaigns = dict(file_campaigns)  # load_campaigns: the built-in first
        self.file_ids = frozenset(file_ids)
        self.order = list(self.file_campaigns)  # the file's order comes first in every map
        self.synced = False
        self.campaigns: dict[str, Campaign] = dict(self.file_campaigns)
        self._listeners: list[Listener] = []
        self._seen: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def on_change(self, listener: Listener) -> None:
        """Call ``listener`` with every new map (and now, with the current one)."""
        self._listeners.append(listener)
        listener(self.campaigns)

    # --- the poll -------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Sync the file first (once), then swap in the store's campaigns if they changed.

        True when a new map was installed. Raises what the database raises (the caller
        logs it and tries again at the next poll).
        """
        if not self.synced:
            self.sync_file()
        with self._lock:
            signature = self.repository.signature()  # before the read: no change is missed
            if signature == self._seen:
                return False
            rows = self.repository.all()
            self._install(self._build(rows))
            self._seen = signature
        return True

    def _build(self, rows: Sequence[StoredDefinition]) -> dict[str, Campaign]:
        position = {campaign_id: i for i, campaign_id in enumerate(self.order)}
        ordered = sorted(rows, key=lambda r: (position.get(r.campaign_id, len(position)),))
        built: dict[str, Campaign] = {}
        for row in ordered:  # sorted() is stable: the rest keep their creation order
            campaign = self._served(row)
            if campaign is None:
                previous = self.campaigns.get(row.campaign_id)
                if previous is not None:  # keep what was served rather than nothing
                    built[row.campaign_id] = previous
                continue
            built[row.campaign_id] = campaign
        return built

    def _served(self, row: StoredDefinition) -> Campaign | None:
        try:
            campaign = StoredCampaign.of(row.campaign_id, row.definition, row.version)
        except ValidationError as exc:
            log.error(
                "stored_campaign_invalid",
                extra={
                    "campaign": row.campaign_id,
                    "version": row.version,
                    "error": "; ".join(f"{f}: {m}" for f, m in invalid_fields(exc))[:500],
                },
            )
            return None
        if row.status != "active":  # paused and archived: kept for stats, never deciding
            campaign = campaign.model_copy(update={"enabled": False})
        return campaign

    def _install(self, campaigns: dict[str, Campaign]) -> None:
        self.campaigns = campaigns
        for listener in self._listeners:
            listener(campaigns)
        log.info("campaigns_applied", extra={"campaigns": len(campaigns)})

    # --- the campaigns file ---------------------------------------------------------------

    def sync_file(self) -> None:
        """Bring the file's campaigns into the store as actor ``file`` (see the module)."""
        for campaign_id, campaign in self.file_campaigns.items():
            # only the built-in campaign can be there without the file naming it
            self._sync_one(campaign, "file" if campaign_id in self.file_ids else "default")
        for row in self.repository.all():
            if row.source == "file" and row.campaign_id not in self.file_ids:
                self._hand_over(row)
        self.synced = True

    def _sync_one(self, campaign: Campaign, source: CampaignSource) -> None:
        campaign_id, fields = campaign.campaign_id, given_fields(campaign)
        for _ in range(RETRIES):
            row = self.repository.get(campaign_id)
            if row is None:
                change = self._change(campaign, fields, "active", source, "create", FILE_ACTOR)
                if self.repository.create(campaign_id, change):
                    return
                continue  # another worker created it meanwhile: compare with theirs
            if source == "default" or row.status == "archived":
                if row.status == "archived" and source == "file":
                    log.warning("file_campaign_archived", extra={"campaign": campaign_id})
                return
            if row.source == "file" and row.definition == fields:
                return  # as in the file (the usual start)
            change = self._change(campaign, fields, row.status, "file", "update", FILE_ACTOR)
            if self.repository.change(campaign_id, row.version, change) is not None:
                return
        log.warning("file_campaign_not_synced", extra={"campaign": campaign_id})

    def _hand_over(self, row: StoredDefinition) -> None:
        campaign = self._validated(row.campaign_id, row.definition, quiet=True)
        full = row.definition if campaign is None else campaign.public()
        change = Change(
            row.kind, row.definition, row.status, "api", "update", full, FILE_ACTOR, self.clock()
        )
        if self.repository.change(row.campaign_id, row.version, change) is not None:
            log.info("file_campaign_handed_over", extra={"campaign": row.campaign_id})

    # --- the API --------------------------------------------------------------------------

    def all(self) -> list[CampaignView]:
        """Every campaign of the store, archived ones included, in the maps' order."""
        rows = self.repository.all()
        position = {campaign_id: i for i, campaign_id in enumerate(self.order)}
        rows.sort(key=lambda r: position.get(r.campaign_id, len(position)))
        return [self._view(r) for r in rows]

    def get(self, campaign_id: str) -> CampaignView:
        return self._view(self._row(campaign_id))

    def history(self, campaign_id: str, *, after: int = 0, limit: int = 100) -> list[ChangeRecord]:
        """The campaign's change log, oldest first (versions above ``after``)."""
        self._row(campaign_id)
        return self.repository.history(campaign_id, after=after, limit=limit)

    def decisions_by_version(self, campaign_id: str) -> dict[int | None, int]:
        return self.repository.decisions_by_version(campaign_id)

    def create(self, campaign: Campaign, actor: str) -> CampaignView:
        """A new campaign, active, at version 1. Raises CampaignExists (409)."""
        fields = given_fields(campaign)
        change = self._change(campaign, fields, "active", "api", "create", actor)
        if not self.repository.create(campaign.campaign_id, change):
            there = self.repository.get(campaign.campaign_id)
            archived = there is not None and there.status == "archived"
            raise CampaignExists(campaign.campaign_id, archived=archived)
        return self._applied(campaign.campaign_id)

    def update(
        self,
        campaign_id: str,
        changes: Mapping[str, Any],
        actor: str,
        *,
        expected_version: int | None = None,
    ) -> CampaignView:
        """Set the fields of ``changes`` (the others as they are), validated as a whole.

        Raises UnknownCampaign (404), CampaignFromFile, CampaignArchived,
        CampaignVersionConflict (409), InvalidInput or ValidationError (422).
        """
        if "campaign_id" in changes and changes["campaign_id"] != campaign_id:
            raise InvalidInput("campaign_id", "cannot change; create a new campaign instead")
        for _ in range(RETRIES):
            row = self._writable(campaign_id, expected_version)
            if "kind" in changes and changes["kind"] != row.kind:
                raise InvalidInput(
                    "kind", f"cannot change (is {row.kind!r}); create a new campaign instead"
                )
            merged = {**row.definition, **changes, "campaign_id": campaign_id}
            campaign = Campaign.model_validate(merged)  # the file's validation, as a whole
            fields = given_fields(campaign)
            if fields == row.definition:
                return self._view(row)  # nothing changes: no new version
            change = self._change(campaign, fields, row.status, row.source, "update", actor)
            if self.repository.change(campaign_id, row.version, change) is not None:
                return self._applied(campaign_id)
            if expected_version is not None:
                self._conflict(campaign_id, expected_version)
        raise CampaignVersionConflict(campaign_id, None, self._row(campaign_id).version)

    def transition(
        self,
        campaign_id: str,
        action: ChangeAction,
        actor: str,
        *,
        expected_version: int | None = None,
    ) -> CampaignView:
        """``pause``, ``resume`` or ``archive``; a campaign already there is left as it is.

        Pause and resume are allowed on the file's campaigns; archiving one is not.
        """
        target = TRANSITIONS[action]
        for _ in range(RETRIES):
            row = self._row(campaign_id)
            if expected_version is not None and row.version != expected_version:
                raise CampaignVersionConflict(campaign_id, expected_version, row.version)
            if row.status == target:
                return self._view(row)
            if row.status == "archived":
                raise CampaignArchived(campaign_id)
            if action == "archive" and row.source == "file":
                raise CampaignFromFile(campaign_id)
            campaign = self._validated(campaign_id, row.definition, quiet=True)
            full = row.definition if campaign is None else campaign.public()
            change = Change(
                row.kind, row.definition, target, row.source, action, full, actor, self.clock()
            )
            if self.repository.change(campaign_id, row.version, change) is not None:
                return self._applied(campaign_id)
            if expected_version is not None:
                self._conflict(campaign_id, expected_version)
        raise CampaignVersionConflict(campaign_id, None, self._row(campaign_id).version)

    # --- helpers --------------------------------------------------------------------------

    def _row(self, campaign_id: str) -> StoredDefinition:
        row = self.repository.get(campaign_id)
        if row is None:
            raise UnknownCampaign(campaign_id)
        return row

    def _writable(self, campaign_id: str, expected_version: int | None) -> StoredDefinition:
        row = self._row(campaign_id)
        if row.status == "archived":
            raise CampaignArchived(campaign_id)
        if row.source == "file":
            raise CampaignFromFile(campaign_id)
        if expected_version is not None and row.version != expected_version:
            raise CampaignVersionConflict(campaign_id, expected_version, row.version)
        return row

    def _conflict(self, campaign_id: str, expected: int) -> None:
        raise CampaignVersionConflict(campaign_id, expected, self._row(campaign_id).version)

    def _change(
        self,
        campaign: Campaign,
        fields: dict[str, Any],
        status: CampaignStatus,
        source: CampaignSource,
        action: ChangeAction,
        actor: str,
    ) -> Change:
        return Change(
            campaign.kind, fields, status, source, action, campaign.public(), actor, self.clock()
        )

    def _validated(
        self, campaign_id: str, fields: Mapping[str, Any], *, quiet: bool = False
    ) -> Campaign | None:
        try:
            return Campaign.model_validate({**fields, "campaign_id": campaign_id})
        except ValidationError:
            if not quiet:
                raise
            return None

    def _view(self, row: StoredDefinition) -> CampaignView:
        campaign = self._validated(row.campaign_id, row.definition, quiet=True)
        active = (
            row.status == "active" and campaign is not None and campaign.is_active(self.clock())
        )
        return CampaignView(row, campaign, active)

    def _applied(self, campaign_id: str) -> CampaignView:
        """After this worker's own change: apply it here now, then show the campaign."""
        try:
            self.refresh()
        except Exception as exc:  # the poll applies it; the change itself is committed
            log.warning("campaigns_not_applied", extra={"error": str(exc).splitlines()[0]})
        return self.get(campaign_id)
