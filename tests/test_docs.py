"""The README, the Dockerfile and CI say what the code does."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_exactly_two_setup_commands() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert first_block is not None
    commands = [line for line in first_block.group(1).splitlines() if line.strip()]
    assert [c.split("#")[0].strip() for c in commands] == [
        "python3 tasks.py run",
        "python3 tasks.py test",
    ]


def test_ci_runs_the_readme_test_command_with_postgres_required() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 tasks.py test" in ci
    assert "RECOFFER_REQUIRE_POSTGRES=1" in ci


def test_every_setting_is_documented_in_the_readme() -> None:
    for name in Settings.model_fields:
        assert f"RECOFFER_{name.upper()}" in README, name


def test_dockerfile_copies_paths_that_exist_and_starts_what_the_readme_documents() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
    cmd = re.search(r"^CMD \[(.*)\]$", dockerfile, re.M)
    assert cmd is not None
    command = " ".join(part.strip().strip('"') for part in cmd.group(1).split(","))
    assert command.startswith("python -m service")
    assert "python -m service" in README
    assert "docker build -t recoffer ." in README
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile


def test_console_script_and_packages_match_the_layout() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["recoffer"] == "training.cli:main"
    data = project["tool"]["setuptools"]["package-data"]["service"]
    assert any("migrations" in pattern for pattern in data)
    assert list((ROOT / "service" / "migrations" / "versions").glob("0001_*.py"))


def test_service_never_imports_the_trainer() -> None:
    # the static half; tests/service/test_entry_point.py checks a running worker's modules
    for path in (ROOT / "service").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) training\b", text, re.M), path
