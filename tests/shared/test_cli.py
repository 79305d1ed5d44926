import subprocess
import sys
from pathlib import Path

import pytest

from shared.cli import run
from shared.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _exit_code(main, **kw) -> int:
    with pytest.raises(SystemExit) as exc:
        run(main, **kw)
    return exc.value.code


def test_run_turns_user_errors_into_one_line_and_status_2(capsys):
    def bad_config():
        raise ConfigError("config file x.yaml does not exist")

    assert _exit_code(bad_config) == 2
    assert capsys.readouterr().err == "error: config file x.yaml does not exist\n"
    assert _exit_code(lambda: 3) == 3
    assert _exit_code(lambda: {"metrics": 1}) == 0  # a non-int result is not a status

    def bug():
        raise KeyError("internal")

    with pytest.raises(KeyError):  # a bug keeps its traceback
        run(bug)


def test_ctrl_c_is_one_line_and_status_130(capsys):
    """Sixth sweep: Ctrl-C printed a full KeyboardInterrupt traceback from the resumable runs."""
    def interrupted():
        raise KeyboardInterrupt

    assert _exit_code(interrupted, resumes=True) == 130
    assert capsys.readouterr().err == "\ninterrupted; rerun the same command to resume where it stopped\n"
    assert _exit_code(interrupted) == 130
    assert capsys.readouterr().err == "\ninterrupted\n"


@pytest.mark.parametrize("cmd", [
    ["generator/generate.py", "--data", "/nonexistent/data", "--out", "OUT"],
    ["finetune/run.py", "--config", "/nonexistent/config.yaml"],
])
def test_cli_reports_bad_paths_without_a_traceback(cmd, tmp_path):
    cmd = [c.replace("OUT", str(tmp_path / "out")) for c in cmd]
    done = subprocess.run([sys.executable, str(REPO / cmd[0]), *cmd[1:]], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "error: " in done.stderr
    assert "/nonexistent/" in done.stderr


def test_run_help_lists_every_objective_and_the_config_keys(capsys):
    """`finetune/run.py --help` names each objective and every TrainConfig key (nested ones as
    section.key), so a user needs no source to write an override."""
    import dataclasses

    import pytest

    from finetune import run
    from finetune.config import OBJECTIVES, TrainConfig

    with pytest.raises(SystemExit):
        run.parse_args(["--help"])
    text = capsys.readouterr().out
    assert all(f"  {name} " in text for name in OBJECTIVES)
    flat = " ".join(text.split())
    for f in dataclasses.fields(TrainConfig):
        value = getattr(TrainConfig(), f.name)
        if dataclasses.is_dataclass(value):
            assert f"{f.name}.:" in flat
            assert all(f"{g.name}=" in flat for g in dataclasses.fields(value))
        else:
            assert f"{f.name}=" in flat
