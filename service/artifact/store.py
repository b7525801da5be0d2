"""Writing, loading and verifying one model version: atomic writes, validated loads.

Layout under a model root::

    <root>/registry.json   {"current": VERSION | null, "history": [...], "updated_at": ...}
    <root>/versions/<VERSION>/manifest.json
    <root>/versions/<VERSION>/<array>.npy

Every array is a plain ``.npy`` file (``allow_pickle=False``). The manifest records each
array's dtype, shape, byte size and sha256, so a truncated or altered file is refused before
anything is served from it.

Two ways to load: memory-mapped (``mmap=True``, the trainer's tools: cheap, but a file changed
in place under a mapping can kill the process with SIGBUS) and owned (``mmap=False``, the
service: each file is read once into memory of the process, checked there, and nothing is read
from the file afterwards, so a ``cp`` over the live directory cannot touch what is served).

A version directory is written under a temporary name, every file fsynced and made read-only,
then renamed into place; the registry file is replaced the same way. Readers therefore see
either the old state or the new one, never half of either (see shared/RELIABILITY.md on
publishing models).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import mmap as mmap_module
import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from service.artifact.manifest import (
    SCHEMA_VERSION,
    ArraySpec,
    FileSpec,
    Manifest,
    ManifestBody,
    manifest_json,
    parse_manifest,
)
from service.errors import ArtifactError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VERSIONS = "versions"
TEMP_PREFIX = ".tmp-"
READ_ONLY = 0o444  # a published file: nobody writes it again (a cp over it is refused)


@dataclass(frozen=True)
class ArrayRule:
    """What one named array must be: its dtype kinds (numpy's ``dtype.kind``: ``U`` unicode
    strings, ``f`` floating point, ``i``/``u`` integers), its number of dimensions, whether every
    artifact has it, and what it means. ``docs/artifact.md`` documents this table (a test keeps
    the two equal); the sizes the arrays must agree on are ``_check_consistency``'s."""

    kinds: str
    ndim: int
    required: bool
    meaning: str


# Every array the service reads. An artifact may carry others (a newer writer's): they are
# loaded, checked against their manifest entry, and ignored.
ARRAYS: dict[str, ArrayRule] = {
    "user_ids": ArrayRule("U", 1, True, "the known users' ids, one per row of user_factors"),
    "item_ids": ArrayRule("U", 1, True, "the served items' ids, one per row of item_factors"),
    "user_factors": ArrayRule("f", 2, True, "ALS user vectors, users x factors"),
    "item_factors": ArrayRule("f", 2, True, "ALS item vectors, items x factors (0: no vector)"),
    "history_indptr": ArrayRule("iu", 1, True, "CSR row pointers of the history, users + 1"),
    "history_indices": ArrayRule("iu", 1, True, "CSR item rows of the history"),
    "history_counts": ArrayRule("f", 1, True, "orders of each (user, item) in the history"),
    "history_age_days": ArrayRule("f", 1, True, "days from its last purchase to reference_time"),
    "popularity": ArrayRule("f", 1, True, "distinct buyers of each item, all time"),
    "trending": ArrayRule("f", 1, True, "distinct buyers of each item in the last weeks"),
    "scored_items": ArrayRule("iu", 1, False, "one count: the first items scores standardise over"),
    "ease_b": ArrayRule("f", 2, False, "EASE item-item weights over the first items"),
    "signal_user_factors": ArrayRule("f", 2, False, "als_signals user vectors"),
    "signal_item_factors": ArrayRule("f", 2, False, "als_signals item vectors"),
    "item_names": ArrayRule("U", 1, False, "each item's name ('' unknown: its id is shown)"),
    "item_categories": ArrayRule("U", 1, False, "each item's category ('' unknown)"),
    "item_prices": ArrayRule("f", 1, False, "each item's price when trained (informational)"),
}
# Arrays every artifact must contain, in the order they are documented.
REQUIRED_ARRAYS = tuple(name for name, rule in ARRAYS.items() if rule.required)


@dataclass
class Artifact:
    """A loaded model version: its manifest and its arrays (memory-mapped or owned)."""

    path: Path
    manifest: Manifest
    arrays: dict[str, npt.NDArray[Any]] = field(repr=False)
    # name -> path of each file of ``Manifest.files`` (an ANN index), checked like the arrays
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def n_users(self) -> int:
        return int(self.arrays["user_ids"].shape[0])

    @property
    def n_items(self) -> int:
        return int(self.arrays["item_ids"].shape[0])


def release_pages(array: npt.NDArray[Any]) -> None:
    """Unmap from this process the pages of a memory-mapped array that a load-time pass read
    (``madvise(MADV_DONTNEED)``: they stay in the page cache, shared, and come back on the
    next access), so the worker's RSS is what its requests use. Nothing for an owned array."""
    base: Any = array
    while base is not None and not isinstance(getattr(base, "_mmap", None), mmap_module.mmap):
        base = getattr(base, "base", None)
    handle = getattr(base, "_mmap", None)
    if isinstance(handle, mmap_module.mmap) and hasattr(mmap_module, "MADV_DONTNEED"):
        handle.madvise(mmap_module.MADV_DONTNEED)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def new_version_name(now: datetime | None = None) -> str:
    """A unique version name that sorts by creation time: ``20261123T181500.123456Z-3fa9``."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%S.%fZ}-{secrets.token_hex(2)}"


def write_artifact(
    root: Path,
    version: str,
    arrays: Mapping[str, npt.NDArray[Any]],
    body: ManifestBody,
    files: Mapping[str, Path] | None = None,
) -> Path:
    """Write one model version atomically under ``root/versions/version``.

    Parameters:
        root: the model root directory (created when missing).
        version: the new version's name; it must not exist yet.
        arrays: name -> numpy array; string arrays must be fixed-width unicode.
        body: what the trainer says about the version; ``schema_version``, ``version`` and
            the ``arrays`` and ``files`` tables are filled in here.
        files: name -> a file to copy into the version as it is (an ANN index), listed with
            its size and sha256 in ``files``.

    Returns the final directory.
    """
    missing = [name for name in REQUIRED_ARRAYS if name not in arrays]
    if missing:
        raise ArtifactError(f"cannot write artifact {version}: missing arrays {missing}")
    versions_dir = root / VERSIONS
    versions_dir.mkdir(parents=True, exist_ok=True)
    final = versions_dir / version
    if final.exists():
        raise ArtifactError(f"version {version} already exists in {versions_dir}")
    tmp = versions_dir / f"{TEMP_PREFIX}{version}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        table: dict[str, ArraySpec] = {}
        for name, array in arrays.items():
            arr = np.ascontiguousarray(array)
            if arr.dtype == object:
                raise ArtifactError(f"array {name!r} has dtype object; refusing to pickle")
            file = tmp / f"{name}.npy"
            with open(file, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            table[name] = ArraySpec(
                file=file.name,
                dtype=arr.dtype.str,
                shape=list(arr.shape),
                bytes=file.stat().st_size,
                sha256=_sha256(file),
            )
        others: dict[str, FileSpec] = {}
        for name, source in (files or {}).items():
            if "/" in name or name == MANIFEST or name.endswith(".npy") or name.startswith("."):
                raise ArtifactError(f"cannot write artifact {version}: bad file name {name!r}")
            file = tmp / name
            shutil.copyfile(source, file)
            with open(file, "rb+") as fh:
                os.fsync(fh.fileno())
            others[name] = FileSpec(file=name, bytes=file.stat().st_size, sha256=_sha256(file))
        manifest = Manifest.model_validate(
            {
                **body.model_dump(by_alias=True),
                "schema_version": SCHEMA_VERSION,
                "version": version,
                "arrays": table,
                "files": others,
            }
        )
        write_bytes_durably(tmp / MANIFEST, manifest_json(manifest))
        for file in tmp.iterdir():
            file.chmod(READ_ONLY)
        fsync_dir(tmp)
        os.replace(tmp, final)
        fsync_dir(versions_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("artifact_written", extra={"version": version, "path": str(final)})
    return final


def read_manifest(path: Path) -> Manifest:
    """Read and validate ``path/manifest.json`` (ArtifactError naming the problem)."""
    file = path / MANIFEST
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"artifact {path} has no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"artifact {path}: unreadable {MANIFEST} ({exc})") from None
    return parse_manifest(data, f"artifact {path}")


def load_artifact(
    path: Path,
    *,
    verify_checksums: bool = True,
    mmap: bool = True,
    mmap_min_bytes: int | None = None,
) -> Artifact:
    """Load and validate one artifact directory.

    ``mmap=True``: numeric arrays are memory-mapped, string arrays read into memory.
    ``mmap=False``: every file is read once into memory the process owns and checked there
    (size, and sha256 unless ``verify_checksums`` is False); the arrays never refer to the
    file again. ``mmap_min_bytes`` (with ``mmap=False``): files of at least this size are
    memory-mapped instead (checked first), strings too, so the page cache holds one copy for
    every worker (issue 15: ten million users' factors); None: none.
    The other files (``Manifest.files``: an ANN index) are checked the same way (size, sha256)
    and handed over as paths. Raises ArtifactError naming the problem for a missing, truncated
    or corrupt file, a wrong dtype or shape, or inconsistent array sizes.
    """
    manifest = read_manifest(path)
    table = manifest.arrays
    missing = [name for name in REQUIRED_ARRAYS if name not in table]
    if missing:
        raise ArtifactError(
            f"artifact {path}: manifest lacks the required array{'s' * (len(missing) > 1)} "
            f"{', '.join(missing)} (see docs/artifact.md)"
        )
    arrays: dict[str, npt.NDArray[Any]] = {}
    for name, spec in table.items():
        file = path / spec.file
        if not spec.file or not file.is_file():
            raise ArtifactError(f"artifact {path}: array file {file.name} is missing")
        mapped = mmap or (mmap_min_bytes is not None and spec.bytes >= mmap_min_bytes)
        if not mapped:
            arr = _read_owned(path, file, spec, verify_checksums)
        else:
            size = file.stat().st_size
            if size != spec.bytes:
                raise ArtifactError(
                    f"artifact {path}: {file.name} has {size} bytes, manifest says {spec.bytes}"
                )
            if verify_checksums and _sha256(file) != spec.sha256:
                raise ArtifactError(f"artifact {path}: {file.name} fails its sha256 check")
            try:
                dtype = np.dtype(spec.dtype)
                strings = dtype.kind in "US" and mmap  # the trainer's tools read strings in
                mode: Literal["r"] | None = None if strings else "r"
                arr = np.load(file, mmap_mode=mode, allow_pickle=False)
            except (ValueError, OSError, KeyError, TypeError) as exc:
                raise ArtifactError(f"artifact {path}: cannot read {file.name} ({exc})") from None
        if arr.dtype != np.dtype(spec.dtype) or list(arr.shape) != spec.shape:
            raise ArtifactError(
                f"artifact {path}: {file.name} is {arr.dtype}{list(arr.shape)}, "
                f"manifest says {spec.dtype}{spec.shape}"
            )
        _check_rule(path, name, arr)
        arrays[name] = arr
    _check_consistency(path, arrays)
    others: dict[str, Path] = {}
    for name, other in manifest.files.items():
        file = path / other.file
        if "/" in other.file or not file.is_file():
            raise ArtifactError(f"artifact {path}: file {other.file} is missing")
        size = file.stat().st_size
        if size != other.bytes:
            raise ArtifactError(
                f"artifact {path}: {other.file} has {size} bytes, manifest says {other.bytes}"
            )
        if verify_checksums and _sha256(file) != other.sha256:
            raise ArtifactError(f"artifact {path}: {other.file} fails its sha256 check")
        others[name] = file
    if manifest.ann is not None:
        unlisted = [i.file for i in manifest.ann.indexes if i.file not in others]
        if unlisted:
            raise ArtifactError(f"artifact {path}: ann index files {unlisted} are not in files")
    _check_counts(path, manifest, arrays)
    return Artifact(path=path, manifest=manifest, arrays=arrays, files=others)


def _check_rule(path: Path, name: str, arr: npt.NDArray[Any]) -> None:
    """An array the service reads has the dtype kind and dimensions ``ARRAYS`` says."""
    rule = ARRAYS.get(name)
    if rule is None:
        return
    if arr.dtype.kind not in rule.kinds or arr.ndim != rule.ndim:
        kinds = "/".join(_KIND_NAMES[k] for k in rule.kinds)
        raise ArtifactError(
            f"artifact {path}: array {name} is {arr.dtype.str} with {arr.ndim} dimension(s); "
            f"it must be {kinds} with {rule.ndim} (see docs/artifact.md)"
        )


_KIND_NAMES = {"U": "unicode", "f": "float", "i": "signed int", "u": "unsigned int"}


def _check_counts(path: Path, manifest: Manifest, a: Mapping[str, npt.NDArray[Any]]) -> None:
    """``counts`` (what ``/v1/model`` reports) describes the arrays served."""
    found = (int(a["user_ids"].shape[0]), int(a["item_ids"].shape[0]))
    said = (manifest.counts.users, manifest.counts.items)
    if found != said:
        raise ArtifactError(
            f"artifact {path}: manifest counts say {said[0]} users x {said[1]} items, "
            f"the arrays hold {found[0]} x {found[1]}"
        )


def _read_owned(path: Path, file: Path, spec: ArraySpec, verify: bool) -> npt.NDArray[Any]:
    """``file`` read once into a buffer of this process, checked, and viewed as its array
    (read-only, no copy). What happens to the file afterwards cannot reach the array."""
    try:
        with open(file, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size != spec.bytes:
                raise ArtifactError(
                    f"artifact {path}: {file.name} has {size} bytes, manifest says {spec.bytes}"
                )
            buffer = bytearray(size)
            view, filled = memoryview(buffer), 0
            while filled < size:  # a file cut short while being read: short reads, then 0
                got = fh.readinto(view[filled:])
                if not got:
                    break
                filled += got
    except OSError as exc:
        raise ArtifactError(f"artifact {path}: cannot read {file.name} ({exc})") from None
    if filled != size:
        raise ArtifactError(f"artifact {path}: {file.name} changed while being read")
    if verify and hashlib.sha256(buffer).hexdigest() != spec.sha256:
        raise ArtifactError(f"artifact {path}: {file.name} fails its sha256 check")
    try:
        header = io.BytesIO(bytes(view[: min(size, 1 << 16)]))
        major, _ = np.lib.format.read_magic(header)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(header)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(header)
        if dtype.hasobject:
            raise ValueError("object arrays are never loaded")
        count = int(np.prod(shape, dtype=np.int64))
        flat = np.frombuffer(buffer, dtype=dtype, count=count, offset=header.tell())
        arr = flat.reshape(shape, order="F" if fortran else "C")
    except (ValueError, OSError, KeyError, TypeError, EOFError) as exc:
        raise ArtifactError(f"artifact {path}: cannot read {file.name} ({exc})") from None
    arr.flags.writeable = False
    return arr


def _check_consistency(path: Path, a: Mapping[str, npt.NDArray[Any]]) -> None:
    n_users, n_items = a["user_ids"].shape[0], a["item_ids"].shape[0]
    problems = []
    if a["user_factors"].ndim != 2 or a["user_factors"].shape[0] != n_users:
        problems.append("user_factors rows != users")
    if a["item_factors"].ndim != 2 or a["item_factors"].shape[0] != n_items:
        problems.append("item_factors rows != items")
    if a["user_factors"].shape[1:] != a["item_factors"].shape[1:]:
        problems.append("user and item factor widths differ")
    indptr = a["history_indptr"]
    if indptr.shape != (n_users + 1,):
        problems.append("history_indptr length != users + 1")
    elif int(indptr[0]) != 0 or int(indptr[-1]) != a["history_indices"].shape[0]:
        problems.append("history_indptr does not run from 0 to the number of entries")
    elif n_users and bool((np.diff(indptr) < 0).any()):
        problems.append("history_indptr decreases")
    nnz = a["history_indices"].shape[0]
    if a["history_counts"].shape != (nnz,) or a["history_age_days"].shape != (nnz,):
        problems.append("history arrays differ in length")
    for name in ("popularity", "trending"):
        if a[name].shape != (n_items,):
            problems.append(f"{name} length != items")
    if "ease_b" in a and (
        a["ease_b"].ndim != 2
        or a["ease_b"].shape[0] != a["ease_b"].shape[1]
        or a["ease_b"].shape[0] > n_items
    ):
        problems.append("ease_b is not square over the first items")
    if "scored_items" in a and (
        a["scored_items"].shape != (1,)
        or a["scored_items"].dtype.kind not in "iu"
        or not 0 < int(a["scored_items"][0]) <= n_items
    ):
        problems.append("scored_items is not one count of items in 1..items")
    signal = [name in a for name in ("signal_user_factors", "signal_item_factors")]
    if any(signal) and not all(signal):
        problems.append("only one of signal_user_factors and signal_item_factors")
    elif all(signal):
        if a["signal_user_factors"].shape != a["user_factors"].shape:
            problems.append("signal_user_factors is not shaped like user_factors")
        if a["signal_item_factors"].shape != a["item_factors"].shape:
            problems.append("signal_item_factors is not shaped like item_factors")
    for name in ("item_names", "item_categories", "item_prices"):
        if name in a and a[name].shape != (n_items,):
            problems.append(f"{name} length != items")
    if nnz and (int(a["history_indices"].max()) >= n_items or int(a["history_indices"].min()) < 0):
        problems.append("history refers to items outside the catalogue")
    if problems:
        raise ArtifactError(f"artifact {path}: inconsistent arrays: {'; '.join(problems)}")
