"""docker-compose.yml and Dockerfile refer only to things that exist (the image itself is built
and run by scripts/check_docker.sh, which needs a Docker engine)."""

from __future__ import annotations

import importlib.util
import json
import os
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


TRAIN_SCRIPT = "scripts/train_then_serve.sh"


def _dry_run(root: Path, **env: str) -> list[list[str]]:
    """The commands ``scripts/train_then_serve.sh`` would run (``DRY_RUN=1``), each split into
    words, with ``root`` as its repository root (the script looks at ``root``'s data/ and runs/)."""
    import shlex
    import shutil
    import subprocess
    import sys

    (root / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / TRAIN_SCRIPT, root / TRAIN_SCRIPT)
    env = {"PATH": "/usr/bin:/bin", "DRY_RUN": "1", "NUM_GPUS": "2", "PY": sys.executable, **env}
    proc = subprocess.run(["bash", str(root / TRAIN_SCRIPT)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]


def _launched(command: list[str]):
    """(parsed accelerate launch options, script, script arguments) of ``-m
    accelerate.commands.launch ...`` (parsing checks that every option exists)."""
    from accelerate.commands.launch import launch_command_parser

    i = command.index("accelerate.commands.launch")
    script = next(j for j in range(i + 1, len(command)) if command[j].endswith(".py"))
    options = launch_command_parser().parse_args([*command[i + 1 : script], command[script]])
    return options, command[script], command[script + 1 :]


def test_generator_train_profile_runs_the_committed_script_on_a_gpu():
    svc = COMPOSE["services"]["generator-train"]
    assert svc["profiles"] == ["generator-train"] and _gpu_reserved(svc)
    assert svc["command"] == [TRAIN_SCRIPT]
    script = ROOT / TRAIN_SCRIPT
    assert script.is_file() and os.access(script, os.X_OK), f"{script} missing or not executable"
    copied = [src for line in re.findall(r"^COPY (.+)$", DOCKERFILE, re.M)
              for src in line.split()[:-1]]
    assert any(TRAIN_SCRIPT.startswith(src.rstrip("/")) for src in copied), "not in the image"
    env = _service_env("generator-train")
    fields = {k[len(ENV_PREFIX):].lower(): v for k, v in env.items()}
    assert set(fields) <= set(Settings.model_fields) and "generator_lora" in Settings.model_fields
    settings = Settings(**fields)
    assert settings.host == "0.0.0.0" and settings.port == 8000 and settings.device == "cuda"
    mounts = {v.split(":")[1] for v in svc["volumes"]}
    assert {"/app/models", "/app/data", "/app/runs", env["NEG_API_STORE_DIR"]} <= mounts
    assert "/readyz" in " ".join(svc["healthcheck"]["test"])
    assert "docker compose --profile generator-train up" in (ROOT / "README.md").read_text()


def test_generator_train_script_runs_reference_pairs_dpo_then_serves(tmp_path):
    """Dry run of the script on a fresh root: the three README commands in order, each a valid
    ``accelerate launch`` of an entry point whose arguments parse and whose config loads; the
    configs chain (reference output → pairs → DPO) and the service serves the same base."""
    from generator import pairs, train
    from generator.dpo import DpoConfig
    from shared.config import load_config

    commands = _dry_run(tmp_path)
    assert commands[0][1:3] == ["-m", "shared.benchmark"]  # data/bench512 is missing here
    launched = [_launched(c) for c in commands[1:4]]
    assert [script for _, script, _ in launched] == [
        "generator/train.py", "generator/pairs.py", "generator/train.py"]
    ref_args, dpo_args = train.parse_args(launched[0][2]), train.parse_args(launched[2][2])
    _, pairs_args = pairs.parse_args(launched[1][2])
    assert (ref_args.stage, dpo_args.stage) == ("reference", "dpo")
    assert str(ref_args.config) == "configs/gpu/sd_inpaint_lora_reference.yaml"
    assert str(dpo_args.config) == "configs/gpu/sd_inpaint_lora_dpo.yaml"
    assert ref_args.resume is None and dpo_args.resume is None  # nothing to resume yet
    ref = load_config(train.TrainConfig, ROOT / ref_args.config, ref_args.overrides)
    prs = load_config(pairs.PairsConfig, ROOT / pairs_args.config, pairs_args.overrides)
    dpo = load_config(DpoConfig, ROOT / dpo_args.config, dpo_args.overrides)
    assert ref.model.backend == dpo.model.backend == "sd-inpaint"
    assert f"{ref.output_dir}/final" == prs.checkpoint == dpo.reference
    assert prs.out == dpo.pairs and prs.held_out_domain == dpo.held_out_domain
    assert prs.root == ref.data.root == dpo.val.root == "data/bench512"
    pairs_launch = launched[1][0]  # one process per GPU (NUM_GPUS=2 here), each on its own
    assert pairs_launch.multi_gpu and pairs_launch.num_processes == 2 and prs.device == "auto"
    for options, _, _ in (launched[0], launched[2]):  # the training configs are one-GPU recipes
        assert options.num_processes == 1 and not options.multi_gpu
    serve = commands[4]
    assert serve[-2:] == ["-m", "api"] and serve[:2] == ["exec", "env"] and len(commands) == 5
    served = dict(a.split("=", 1) for a in serve if a.startswith(ENV_PREFIX))
    assert served["NEG_API_GENERATOR"] == ref.model.sd.pretrained == dpo.model.sd.pretrained
    assert _service_env("generator-train")["NEG_API_GENERATOR"] == ref.model.sd.pretrained

    # a restart: the benchmark and the reference exist, DPO was killed after a checkpoint
    (tmp_path / "data/bench512").mkdir(parents=True)
    (tmp_path / "data/bench512/manifest.jsonl").touch()
    (tmp_path / ref.output_dir / "final").mkdir(parents=True)
    (tmp_path / dpo.output_dir / "checkpoints/checkpoint_3").mkdir(parents=True)
    commands = _dry_run(tmp_path)
    assert [_launched(c)[1] for c in commands[:2]] == ["generator/pairs.py", "generator/train.py"]
    assert train.parse_args(_launched(commands[1])[2]).resume == "latest"
    # DPO finished: serve its best checkpoint, or the reference LoRA when it did not beat it
    summary = tmp_path / dpo.output_dir / "summary.json"
    for best, expected in ((None, f"{ref.output_dir}/final"), ("runs/gpu/sd_dpo/best", None)):
        summary.write_text(json.dumps({"best_checkpoint": best}))
        commands = _dry_run(tmp_path)
        assert [_launched(c)[1] for c in commands[:-1]] == ["generator/pairs.py"]
        served = dict(a.split("=", 1) for a in commands[-1] if a.startswith(ENV_PREFIX))
        assert served["NEG_API_GENERATOR_LORA"] == (expected or best)
