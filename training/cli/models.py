"""``recoffer models``, ``rollback`` and ``prune``: the versions in a model root, `current`, and
removing old versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from service.artifact import KEEP_VERSIONS, ModelStore, load_artifact
from service.errors import UsageProblem
from service.scoring import PROTOCOLS
from training.cli.common import DEFAULT_MODEL_DIR, ModelDir, setup_logging
from training.cli.render import err, errors, models_table, out

KeepVersions = Annotated[
    int,
    typer.Option(
        "--keep-versions",
        "--keep",
        envvar="RECOFFER_KEEP_VERSIONS",
        min=1,
        help="Versions to keep besides the current and the previous one (newest first); "
        "older ones are removed after each training run.",
    ),
]


def _existing_store(model_dir: Path) -> ModelStore:
    """The model root of a listing or pruning command: a mistyped --model-dir is bad input
    (exit 2), not an empty root."""
    if not model_dir.is_dir():
        raise UsageProblem(f"--model-dir: no such directory: {model_dir}")
    return ModelStore(model_dir)


def models(
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """List model versions, oldest first, with their quality and which one is current."""
    setup_logging(False)
    with errors():
        store = _existing_store(model_dir)
        current = store.current()
        rows = []
        for name, manifest in store.iter_manifests():
            row: dict[str, Any] = {"version": name, "current": name == current}
            if manifest is None:
                row["error"] = "unreadable manifest"
            else:
                test, served = manifest.metrics.test, manifest.served
                row.update(
                    created_at=manifest.created_at.isoformat(),
                    served=served,
                    promoted_by_gate=None if manifest.gate is None else manifest.gate.passed,
                    **{
                        f"{p}_ndcg@10": test.get(p, {}).get(served.get(p, ""), {}).get("ndcg@10")
                        for p in PROTOCOLS
                    },
                )
            rows.append(row)
    if as_json:
        out.print(json.dumps({"current": current, "versions": rows}, default=str), markup=False)
        return
    if not rows:
        err.print(f"no model versions in {model_dir}", markup=False)
        return
    out.print(models_table(rows, model_dir))


def rollback(
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    to: Annotated[
        str | None, typer.Option(help="Version to switch to (default: the previous one).")
    ] = None,
) -> None:
    """Switch the current model back to the previously promoted version (or to --to)."""
    from training.lock import trainer_lock

    setup_logging(False)
    with errors():
        store = _existing_store(model_dir)
        if not store.versions():
            raise UsageProblem(f"no model versions in {model_dir}")
        before = store.current()
        with trainer_lock(store.root):
            target = store.rollback(to)
            if to is not None:
                load_artifact(store.version_path(target))
    out.print(f"current: {before} -> {target}", markup=False)


def prune(
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    keep: KeepVersions = KEEP_VERSIONS,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be removed; remove nothing.")
    ] = False,
) -> None:
    """Remove old model versions: all but the newest --keep, the current and the previous one.

    Training runs do this after each run; this is for a root pruned by hand or with a new
    --keep. Takes the trainer lock, so a version being written is never touched.

    Examples:

      recoffer prune --model-dir var/models --keep 5 --dry-run
    """
    from training.lock import trainer_lock

    setup_logging(False)
    with errors():
        store = _existing_store(model_dir)
        if not store.versions():
            err.print(f"no model versions in {model_dir}", markup=False)
            return
        with trainer_lock(store.root):
            removed = store.prunable(keep) if dry_run else store.prune(keep)
    verb = "would remove" if dry_run else "removed"
    for version in removed:
        out.print(f"{verb} {version}", markup=False)
    kept = len(store.versions()) - (len(removed) if dry_run else 0)
    err.print(f"{verb} {len(removed)} version(s), {kept} kept", markup=False)
