"""The model root's versions and its ``current`` pointer, switched atomically.

Layout under a model root::

    <root>/registry.json   {"current": VERSION | null, "history": [...], "updated_at": ...}
    <root>/versions/<VERSION>/   one version (``service.artifact.store``)

The registry file is replaced atomically (temporary file, fsync, rename, fsync of the
directory): readers see the old pointer or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.artifact.manifest import Manifest
from service.artifact.store import (
    MANIFEST,
    TEMP_PREFIX,
    VERSIONS,
    fsync_dir,
    read_manifest,
    write_bytes_durably,
)
from service.errors import ArtifactError, RegistryError

REGISTRY = "registry.json"
KEEP_VERSIONS = 10  # versions kept by pruning, besides the current and the previous one


class ModelStore:
    """Versions under a model root and the atomically switched ``current`` pointer."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def versions_dir(self) -> Path:
        return self.root / VERSIONS

    def version_path(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise RegistryError(f"invalid version name {version!r}")
        return self.versions_dir / version

    def versions(self) -> list[str]:
        """Published versions, oldest first (names sort by creation time)."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.versions_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
        )

    def read_registry(self) -> dict[str, Any]:
        file = self.root / REGISTRY
        try:
            data = json.loads(file.read_text())
        except FileNotFoundError:
            return {"current": None, "history": []}
        except (OSError, ValueError) as exc:
            raise RegistryError(f"registry {file} is unreadable ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("history", []), list):
            raise RegistryError(f"registry {file} has an unexpected shape")
        data.setdefault("history", [])
        data.setdefault("current", None)
        return data

    def registry_signature(self) -> tuple[int, int] | None:
        """(mtime in ns, size) of the registry file, or None: a cheap "did it change?" probe."""
        try:
            info = (self.root / REGISTRY).stat()
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    def current(self) -> str | None:
        """The version being served, or None before the first promotion."""
        value = self.read_registry().get("current")
        return str(value) if value else None

    def current_path(self) -> Path | None:
        version = self.current()
        return self.version_path(version) if version else None

    def _write_registry(self, data: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = dict(data, updated_at=datetime.now(UTC).isoformat())
        tmp = self.root / f"{TEMP_PREFIX}{REGISTRY}-{secrets.token_hex(4)}"
        try:
            write_bytes_durably(tmp, json.dumps(data, indent=2).encode())
            os.replace(tmp, self.root / REGISTRY)
            fsync_dir(self.root)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def promote(self, version: str) -> None:
        """Make ``version`` current; the one it replaces stays in the history for rollback."""
        if not (self.version_path(version) / MANIFEST).is_file():
            raise RegistryError(f"no such version {version!r} in {self.versions_dir}")
        data = self.read_registry()
        history = [v for v in data["history"] if v != version]
        history.append(version)
        self._write_registry({"current": version, "history": history})

    def rollback(self, to: str | None = None) -> str:
        """Switch ``current`` back to the previous promoted version (or to ``to``)."""
        data = self.read_registry()
        history: list[str] = [v for v in data["history"] if (self.version_path(v)).is_dir()]
        current = data.get("current")
        if to is not None:
            if not (self.version_path(to) / MANIFEST).is_file():
                raise RegistryError(f"no such version {to!r} in {self.versions_dir}")
            target = to
            history = [v for v in history if v != to] + [to]
        else:
            if current in history:
                history.remove(current)
            if not history:
                raise RegistryError("nothing to roll back to: no earlier promoted version")
            target = history[-1]
        self._write_registry({"current": target, "history": history})
        return target

    def previous(self) -> str | None:
        """The version ``rollback()`` would switch to, or None."""
        data = self.read_registry()
        history = [v for v in data["history"] if self.version_path(v).is_dir()]
        earlier = [v for v in history if v != data.get("current")]
        return earlier[-1] if earlier else None

    def prunable(self, keep: int = KEEP_VERSIONS) -> list[str]:
        """The versions ``prune(keep)`` removes, oldest first: all but the ``keep`` newest, the
        current and the previous one. A version being written is no version yet (it lives
        under a temporary name) and is never among them."""
        if keep < 1:
            raise RegistryError(f"keep at least one version, not {keep}")
        versions = self.versions()
        protected = set(versions[-keep:]) | {self.current(), self.previous()}
        return [v for v in versions if v not in protected]

    def prune(self, keep: int = KEEP_VERSIONS) -> list[str]:
        """Remove ``prunable(keep)``; returns what was removed. Call with the trainer lock held.

        Each version is first renamed to a temporary name (readers never see half of one), then
        deleted; a removal cut short is finished by ``cleanup_temporaries``.
        """
        removed = []
        for version in self.prunable(keep):
            doomed = self.versions_dir / f"{TEMP_PREFIX}pruned-{version}"
            os.replace(self.version_path(version), doomed)
            shutil.rmtree(doomed)
            removed.append(version)
        if removed:
            fsync_dir(self.versions_dir)
        return removed

    def cleanup_temporaries(self) -> list[Path]:
        """Remove leftovers of writers that died mid-write. Call with the trainer lock held."""
        removed: list[Path] = []
        for parent in (self.versions_dir, self.root):
            if not parent.is_dir():
                continue
            for p in parent.iterdir():
                if p.name.startswith(TEMP_PREFIX):
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
                    removed.append(p)
        return removed

    def iter_manifests(self) -> Iterator[tuple[str, Manifest | None]]:
        """(version, manifest or None when unreadable) for every version, oldest first."""
        for version in self.versions():
            try:
                yield version, read_manifest(self.version_path(version))
            except ArtifactError:
                yield version, None
