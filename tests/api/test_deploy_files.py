"""docker-compose.yml and Dockerfile refer only to things that exist (the image itself is built
and run by scripts/check_docker.sh, which needs a Docker engine)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from api.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with the defaults (no variables are set in the test)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def _service_env(name: str) -> dict[str, str]:
    return {k: _interpolate(v) for k, v in COMPOSE["services"][name].get("environment", {}).items()}


def _repo_paths_in_command(command: list[str]) -> list[str]:
    return [a for a in command if re.search(r"\.(py|ya?ml)$", a)]


def _gpu_reserved(service: dict) -> bool:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get(
        "devices", [])
    return any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


@pytest.mark.parametrize("service", ["generator", "generator-cpu"])
def test_service_env_names_and_values_are_settings(service):
    env = _service_env(service)
    assert env, f"{service} sets no environment"
    fields = {}
    for key, value in env.items():
        assert key.startswith(ENV_PREFIX), f"{service}: {key} is not a service setting"
        name = key[len(ENV_PREFIX):].lower()
        assert name in Settings.model_fields, f"{service}: {key} matches no Settings field"
        fields[name] = value
    settings = Settings(**fields)  # the values validate too
    assert settings.host == "0.0.0.0" and settings.port == 8000
    command = COMPOSE["services"][service]["command"]
    assert command[:3] == ["python", "-m", "api"]
    assert (ROOT / "api" / "__main__.py").is_file()


def test_generator_service_gpu_volumes_health_port():
    svc = COMPOSE["services"]["generator"]
    assert _gpu_reserved(svc)
    env = _service_env("generator")
    mounts = {v.split(":")[1] for v in svc["volumes"]}
    assert env["NEG_API_STORE_DIR"] in mounts  # store on a volume
    assert any(env["NEG_API_GENERATOR"].startswith(m) for m in mounts)  # model on a volume
    assert "/readyz" in " ".join(svc["healthcheck"]["test"])
    assert svc["ports"] == ["127.0.0.1:8000:8000"]
    assert "negatives-store" in COMPOSE["volumes"]


def test_cpu_profile_serves_the_embedded_default():
    svc = COMPOSE["services"]["generator-cpu"]
    assert svc["profiles"] == ["cpu"] and not _gpu_reserved(svc)
    env = _service_env("generator-cpu")
    assert "NEG_API_GENERATOR" not in env and env["NEG_API_DEVICE"] == "cpu"
    assert Settings(**{k[len(ENV_PREFIX):].lower(): v for k, v in env.items()}).generator is None


def test_trainer_waits_for_a_healthy_generator_and_uses_its_url():
    svc = COMPOSE["services"]["trainer"]
    assert svc["depends_on"]["generator"]["condition"] == "service_healthy"
    assert svc["command"][:2] == ["accelerate", "launch"]
    assert importlib.util.find_spec("accelerate") is not None
    url_env = next(k for k, v in svc["environment"].items() if str(v).startswith("http://"))
    assert svc["environment"][url_env] == "http://generator:8000"
    # the trainer reads that variable
    sources = "".join(p.read_text() for p in (ROOT / "finetune").rglob("*.py"))
    assert f'"{url_env}"' in sources, f"no finetune code reads ${url_env}"
    assert _gpu_reserved(svc)


def test_trainer_config_exists():
    paths = _repo_paths_in_command(COMPOSE["services"]["trainer"]["command"])
    assert paths == ["finetune/run.py", "configs/gpu/finetune_biomedclip.yaml"]
    for path in paths:
        assert (ROOT / path).is_file(), f"docker-compose.yml uses {path}, which is missing"


def test_evaluator_runs_the_evaluation_cli_with_options_it_has():
    from finetune.evaluation.cli import parse_args

    svc = COMPOSE["services"]["evaluator"]
    assert svc["profiles"] == ["eval"] and _gpu_reserved(svc)
    command = [_interpolate(a) for a in svc["command"]]
    assert command[:3] == ["python", "-m", "finetune.evaluate"]
    args = parse_args(command[3:])  # every option exists and parses
    assert args.segmenter == "sam_vit_h" and args.device == "cuda" and args.preset == "breast"


def test_dockerfile_copies_existing_paths_and_sets_known_settings():
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", DOCKERFILE, re.M)
    for line in re.findall(r"^COPY (.+)$", DOCKERFILE, re.M):
        *sources, _dest = line.split()
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert "-r requirements.txt -c constraints.txt" in DOCKERFILE
    for key in re.findall(r"\b(NEG_API_[A-Z_]+)=", DOCKERFILE):
        assert key[len(ENV_PREFIX):].lower() in Settings.model_fields, key
    assert 'CMD ["python", "-m", "api"]' in DOCKERFILE
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("shared", "generator", "api", "finetune", "configs", "constraints.txt"):
        assert needed not in ignored


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NEG_API_MAX_BATCH", "3")
    monkeypatch.setenv("NEG_API_API_KEY", "")  # compose's ${NEG_API_API_KEY:-} when unset
    monkeypatch.setenv("NEG_API_STORE_DIR", str(tmp_path))
    settings = Settings()
    assert settings.max_batch == 3 and settings.api_key is None and settings.store_dir == tmp_path
    monkeypatch.setenv("NEG_API_MAX_BATCH", "0")
    with pytest.raises(ValueError, match="max_batch"):
        Settings()


def test_uvicorn_import_string_builds_the_app(monkeypatch, tmp_path):
    """`uvicorn api.main:app` resolves to an app configured from the environment."""
    from fastapi import FastAPI
    from uvicorn.importer import import_from_string

    monkeypatch.setenv("NEG_API_STORE_DIR", str(tmp_path))
    monkeypatch.setenv("NEG_API_MAX_BATCH", "5")
    app = import_from_string("api.main:app")
    assert isinstance(app, FastAPI) and app.state.settings.max_batch == 5
