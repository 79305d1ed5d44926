from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared.config import ConfigError, load_config, to_dict


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-4  # learning rate
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class Train:
    steps: int = 100
    name: str = "run"
    out: Path | None = None
    amp: bool = False
    optim: Optim = field(default_factory=Optim)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\noptim:\n  betas: [0.8, 0.9]\n")
    cfg = load_config(Train, path, ["optim.lr=0.01", "amp=true", "out=runs/x"])
    assert cfg == Train(steps=5, amp=True, out=Path("runs/x"), optim=Optim(lr=0.01, betas=(0.8, 0.9)))
    assert to_dict(cfg)["optim"] == {"lr": 0.01, "betas": [0.8, 0.9]}
    assert load_config(Train, to_dict(cfg)) == cfg


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match="optim.momentum"):
        load_config(Train, {"optim": {"momentum": 0.9}})
    with pytest.raises(ConfigError, match="unknown config key: optim.lrr"):
        load_config(Train, None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="stepz"):
        load_config(Train, {"stepz": 3})


def test_bad_values_and_forms():
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        load_config(Train, None, ["steps=ten"])
    with pytest.raises(ConfigError, match="expected true/false"):
        load_config(Train, {"amp": "yes please"})
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(Train, None, ["steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Train, "/nonexistent/config.yaml")


def test_broken_yaml_is_a_config_error_with_its_place(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("steps: 3\noptim: [1,\n")  # was: a yaml.parser.ParserError traceback
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML \(.* at line 3, column 1\)"):
        load_config(Train, path)
    with pytest.raises(ConfigError, match=r"override 'optim.betas=\[0.8,': the value is not valid YAML"):
        load_config(Train, None, ["optim.betas=[0.8,"])


def test_exponent_without_a_dot_is_a_number_and_words_are_not(tmp_path):
    # YAML 1.1 (PyYAML) reads 2e-5 as the string "2e-5"; a learning rate typed that way must work
    assert load_config(Train, None, ["optim.lr=2e-5"]).optim.lr == 2e-5
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 3E-4\n")
    assert load_config(Train, path).optim.lr == 3e-4
    for bad in ("fast", "nan", "-inf"):
        with pytest.raises(ConfigError, match="optim.lr: expected a finite number"):
            load_config(Train, None, [f"optim.lr={bad}"])


def test_yes_no_on_off_are_strings_as_in_yaml_1_2(tmp_path):
    @dataclass(frozen=True)
    class Run:
        mixed_precision: str = "bf16"
        amp: bool = True

    # was: YAML 1.1 read "no" as False -> "mixed_precision: expected a string, got False"
    assert load_config(Run, None, ["mixed_precision=no"]).mixed_precision == "no"
    (tmp_path / "c.yaml").write_text("mixed_precision: no\namp: false\n")
    assert load_config(Run, tmp_path / "c.yaml") == Run(mixed_precision="no", amp=False)
    with pytest.raises(ConfigError, match="expected true/false, got 'off'"):
        load_config(Run, None, ["amp=off"])
