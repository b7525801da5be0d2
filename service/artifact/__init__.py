"""The on-disk model contract, owned by the service and written by the trainer.

- ``manifest``: the typed manifest (what a version is);
- ``store``: one version's directory, written atomically and read-only, verified on load
  (every array a plain ``.npy``, ``allow_pickle=False``, memory-mapped for the trainer's tools
  or read into memory the service owns, each checked against the manifest's dtype, shape, size
  and sha256);
- ``registry``: the model root's versions, the atomically switched ``current`` pointer, and
  pruning of old versions;
- ``runs``: the training runs of the model root (``runs.jsonl``), appended by the trainer;
- ``lock``: the trainer lock, one writer of the registry at a time.

See shared/RELIABILITY.md on publishing models: readers see the old state or the new one.
"""

from service.artifact.manifest import SCHEMA_VERSION, Manifest, ManifestBody
from service.artifact.registry import KEEP_VERSIONS, REGISTRY, ModelStore
from service.artifact.runs import KEEP_RUNS, RUNS, RunLog, TrainingRun, read_runs, record_run
from service.artifact.store import (
    ARRAYS,
    MANIFEST,
    REQUIRED_ARRAYS,
    TEMP_PREFIX,
    Artifact,
    load_artifact,
    new_version_name,
    read_manifest,
    write_artifact,
)

__all__ = [
    "ARRAYS",
    "KEEP_RUNS",
    "KEEP_VERSIONS",
    "MANIFEST",
    "REGISTRY",
    "REQUIRED_ARRAYS",
    "RUNS",
    "SCHEMA_VERSION",
    "TEMP_PREFIX",
    "Artifact",
    "Manifest",
    "ManifestBody",
    "ModelStore",
    "RunLog",
    "TrainingRun",
    "load_artifact",
    "new_version_name",
    "read_manifest",
    "read_runs",
    "record_run",
    "write_artifact",
]
