"""The API started as the image starts it (``python -m service``) loads nothing of the trainer.

A ``sitecustomize`` on the server's path makes every process write the names of the modules it
has loaded, again and again (uvicorn ends on the signal itself, so no exit hook would run); the
test serves real requests first, so whatever a request imports is counted.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.artifact import ModelStore, load_artifact

ROOT = Path(__file__).resolve().parents[2]
KEY = "frontend-key-0123456789"
TRAINER_MODULES = ("pandas", "implicit", "training", "pyarrow", "typer", "pymc", "pytensor")

SITECUSTOMIZE = """
import json, os, sys, threading, time

def _write_modules():
    out = os.path.join(os.environ["RECOFFER_TEST_MODULES_DIR"], f"{os.getpid()}.json")
    while True:
        with open(out + ".tmp", "w") as fh:
            json.dump(sorted(sys.modules), fh)
        os.replace(out + ".tmp", out)
        time.sleep(0.1)

threading.Thread(target=_write_modules, daemon=True).start()
"""


def _serve_and_collect(command: list[str], root: Path, tmp_path: Path) -> list[list[str]]:
    """Start ``command``, ask for recommendations; the module lists of its processes."""
    from benchmarks.harness import Server

    hook, modules = tmp_path / "hook", tmp_path / "modules"
    hook.mkdir()
    modules.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {
        "PYTHONPATH": f"{hook}{os.pathsep}{ROOT}",
        "RECOFFER_TEST_MODULES_DIR": str(modules),
        "RECOFFER_MODEL_DIR": str(root),
        "RECOFFER_DATABASE_URL": f"sqlite:///{tmp_path / 'recoffer.db'}",
        "RECOFFER_FRONTEND_KEYS": KEY,
        "RECOFFER_HOST": "127.0.0.1",
    }
    user = str(load_artifact(ModelStore(root).current_path()).arrays["user_ids"][0])  # type: ignore[arg-type]
    with Server(env, command=lambda port: [*command, "--port", str(port)]) as server:
        headers = {"X-API-Key": KEY}
        known = httpx.get(f"{server.url}/v1/users/{user}/recommendations", headers=headers)
        assert known.json()["source"] == "model"
        item = known.json()["items"][0]["item_id"]
        event = {"user_id": "visitor", "type": "view", "item_id": item}
        assert httpx.post(f"{server.url}/v1/events", json=event, headers=headers).is_success
        assert httpx.get(f"{server.url}/v1/model", headers=headers).status_code == 200
        time.sleep(0.5)  # every process writes its list once more
        return [json.loads(p.read_text()) for p in modules.glob("*.json")]


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([sys.executable, "-m", "service"], id="python -m service (the image)"),
        pytest.param([sys.executable, "-m", "service", "--workers", "2"], id="two workers"),
        pytest.param([sys.executable, "-m", "training.cli", "serve"], id="recoffer serve"),
    ],
)
def test_the_api_worker_loads_nothing_of_the_trainer(
    command: list[str], small_model_root: Path, tmp_path: Path
) -> None:
    processes = _serve_and_collect(command, small_model_root, tmp_path)
    workers = [names for names in processes if "service.app" in names]
    expected = 2 if "--workers" in command else 1
    assert len(workers) == expected, [len(p) for p in processes]
    for names in workers:
        assert "service.recommend.recommender" in names  # it did serve
        loaded = [n for n in names if n.split(".")[0] in TRAINER_MODULES]
        assert loaded == [], loaded
