"""`python -m api` checks its NEG_API_* settings before serving: an unknown variable, a bad value,
or a generator / LoRA / device / store folder it could never load with is one `error:` line naming
the variable (exit status 2), not a traceback or a service answering 503 for ever."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from api.service import check_startup
from api.settings import Settings, SettingsError, settings_from_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.upper().startswith("NEG_API_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NEG_API_STORE_DIR", str(tmp_path / "store"))


@pytest.mark.parametrize("var, value, says", [
    ("NEG_API_MAX_BATCH", "-1", "NEG_API_MAX_BATCH: Input should be greater than or equal to 1"),
    ("NEG_API_PORT", "99999", "NEG_API_PORT: Input should be less than or equal to 65535"),
    ("NEG_API_PROTECT_DOCS", "maybe", "NEG_API_PROTECT_DOCS: Input should be a valid boolean"),
])
def test_bad_value_names_the_variable_in_one_line(monkeypatch, var, value, says):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as err:
        settings_from_env()
    assert says in str(err.value) and repr(value) in str(err.value) and "\n" not in str(err.value)


def test_api_key_is_not_echoed(monkeypatch):
    monkeypatch.setenv("NEG_API_API_KEY", "s3cret")
    monkeypatch.setenv("NEG_API_MAX_BATCH", "0")
    with pytest.raises(SettingsError, match="NEG_API_MAX_BATCH") as err:
        settings_from_env()
    assert "s3cret" not in str(err.value)


def test_unknown_variable_is_refused_with_the_closest_name(monkeypatch):
    monkeypatch.setenv("NEG_API_MAX_BATCHES", "4")  # was ignored: max_batch stayed 8
    with pytest.raises(SettingsError, match="NEG_API_MAX_BATCHES: no such setting; did you mean "
                                            "NEG_API_MAX_BATCH?"):
        settings_from_env()


def test_valid_environment_passes(monkeypatch, tmp_path):
    monkeypatch.setenv("NEG_API_MAX_BATCH", "3")
    settings = settings_from_env()
    assert settings.max_batch == 3
    check_startup(settings)  # the embedded default on cpu, a store folder still to create
    assert not (tmp_path / "store").exists()  # the check creates nothing


def _check(tmp_path, **fields):
    check_startup(Settings(**{"store_dir": tmp_path / "store", **fields}))


def test_store_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SettingsError, match="NEG_API_STORE_DIR=.*f: exists and is not a directory"):
        _check(tmp_path, store_dir=tmp_path / "f")
    with pytest.raises(SettingsError, match="NEG_API_STORE_DIR=.*is a file"):
        _check(tmp_path, store_dir=tmp_path / "f" / "sub")


@pytest.mark.parametrize("fields, says", [
    ({"generator": "/nope"}, "NEG_API_GENERATOR=/nope: no such checkpoint folder"),
    ({"generator": "nonexistent/model"}, "NEG_API_GENERATOR=nonexistent/model: no such checkpoint "
                                         "folder, and no hub model of that id in the local"),
    ({"generator": "a/b/c"}, "NEG_API_GENERATOR=a/b/c: no such checkpoint folder"),
    ({"device": "gpu"}, "NEG_API_DEVICE 'gpu' is not a torch device"),
    ({"generator_lora": "/nope"}, "NEG_API_GENERATOR_LORA=/nope: a LoRA applies to an sd-inpaint "
                                  "NEG_API_GENERATOR"),
])
def test_generator_settings_it_could_never_load(tmp_path, fields, says):
    with pytest.raises(SettingsError) as err:
        _check(tmp_path, **fields)
    assert says in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(tmp_path):
    with pytest.raises(SettingsError, match="NEG_API_DEVICE cuda: no CUDA GPU is available"):
        _check(tmp_path, device="cuda")


def test_sd_inpaint_layouts(tmp_path):
    """A pipeline dir takes a LoRA dir; a folder of neither layout and a LoRA without its weights
    file are refused; texture matching and the kriging prior are for pixel checkpoints."""
    pipe, lora, other = tmp_path / "pipe", tmp_path / "lora", tmp_path / "other"
    for d in (pipe, lora, other):
        d.mkdir()
    (pipe / "model_index.json").write_text("{}")
    _check(tmp_path, generator=str(pipe))
    with pytest.raises(SettingsError, match="NEG_API_GENERATOR_LORA=.*lora: not a diffusers LoRA dir"):
        _check(tmp_path, generator=str(pipe), generator_lora=str(lora))
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"")
    _check(tmp_path, generator=str(pipe), generator_lora=str(lora))
    with pytest.raises(SettingsError, match="NEG_API_GENERATOR=.*other: neither a pixel checkpoint"):
        _check(tmp_path, generator=str(other))
    with pytest.raises(SettingsError, match="NEG_API_TEXTURE_MATCH"):
        _check(tmp_path, generator=str(pipe), texture_match=True)
    with pytest.raises(SettingsError, match="NEG_API_COARSE_PRIOR=kriging: .*pixel checkpoints only"):
        _check(tmp_path, generator=str(pipe), coarse_prior="kriging")
    _check(tmp_path, generator=str(pipe), coarse_prior="biharmonic")  # what SD does anyway


def _python_m_api(env: dict[str, str]) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    full = {k: v for k, v in os.environ.items() if not k.upper().startswith("NEG_API_")}
    full |= {"NEG_API_HOST": "127.0.0.1", "NEG_API_PORT": str(port), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "api"], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("env, says", [
    ({"NEG_API_MAX_BATCH": "-1"}, "error: NEG_API_MAX_BATCH: "),  # was a traceback, rc 1
    ({"NEG_API_GENERATOR": "/nope"}, "error: NEG_API_GENERATOR=/nope: "),  # was 503 for ever
])
def test_python_m_api_fails_at_start_in_one_line(tmp_path, env, says):
    done = _python_m_api({"NEG_API_STORE_DIR": str(tmp_path / "store"), **env})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith(says) and done.stderr.count("\n") == 1, done.stderr[-2000:]


def test_uvicorn_app_from_the_environment_runs_the_same_checks(monkeypatch):
    from api.main import create_app

    monkeypatch.setenv("NEG_API_MAX_BATCHES", "4")  # `uvicorn api.main:app` builds create_app()
    with pytest.raises(SettingsError, match="NEG_API_MAX_BATCHES: no such setting"):
        create_app()


def test_cli_port_overrides_the_environment_and_bad_options_are_refused(monkeypatch, capsys):
    """`python -m api --port N` binds N (it was silently ignored: the service came up on 8000);
    an out-of-range port or an unknown option ends with an argparse error, exit status 2."""
    from api.__main__ import settings_from_args

    monkeypatch.setenv("NEG_API_PORT", "8100")
    monkeypatch.setenv("NEG_API_HOST", "127.0.0.1")  # restored after the test: the CLI writes both
    assert settings_from_args([]).port == 8100
    assert settings_from_args(["--port", "8123", "--host", "0.0.0.0"]).port == 8123
    assert settings_from_env().host == "0.0.0.0"
    for argv, says in ((["--port", "99999"], "expected a TCP port 0-65535"),
                       (["--prot", "8123"], "unrecognized arguments: --prot")):
        with pytest.raises(SystemExit) as err:
            settings_from_args(argv)
        assert err.value.code == 2 and says in capsys.readouterr().err
