"""DPO pairs built in shards (generator/sharding.py's Shard/run_shard/finish) equal a one-process build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from generator import pairs
from generator.pairs import PairsConfig, build_pairs, read_pairs
from generator.sharding import Shard

REPO = Path(__file__).resolve().parents[2]
SHARD_0 = ("--shard", "0", "--num-shards", "2")
SHARD_1 = ("--shard", "1", "--num-shards", "2")


def _files(out: Path) -> dict[str, bytes]:
    """pairs.jsonl and every PNG, by path relative to ``out``."""
    files = [out / "pairs.jsonl", *sorted((out / "images").glob("*.png"))]
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


def _meta_without_out(out: Path) -> dict:
    meta = json.loads((out / "pairs_config.json").read_text())
    del meta["config"]["out"]
    return meta


def test_shard_takes_positions_r_r_plus_n():
    assert Shard(1, 3).take(list("abcdefg")) == [(1, "b"), (4, "e")]
    assert Shard().take([7, 8]) == [(0, 7), (1, 8)]
    with pytest.raises(ValueError, match="shard 2 of 2"):
        Shard(2, 2)


def test_two_shards_merge_to_the_one_process_pairs(bench_root, tiny_generator, tiny_scorers,
                                                   tmp_path):
    one = PairsConfig(root=str(bench_root), out=str(tmp_path / "one"), samples_per_positive=3,
                      steps=2, max_items=3)
    assert build_pairs(one, tiny_generator, tiny_scorers) == tmp_path / "one" / "pairs.jsonl"
    two = replace(one, out=str(tmp_path / "two"))
    # the second shard first: no merge while the first shard's records are missing
    assert build_pairs(two, tiny_generator, tiny_scorers, shard=Shard(1, 2)) is None
    assert not (tmp_path / "two" / "pairs.jsonl").exists()
    done = [json.loads(p.read_text())["index"] for p in (tmp_path / "two" / "records").iterdir()]
    assert done == [1]  # only position 1 of the 3 positives
    assert build_pairs(two, tiny_generator, tiny_scorers, shard=Shard(0, 2)) is not None
    assert _files(tmp_path / "two") == _files(tmp_path / "one")  # byte-identical
    assert _meta_without_out(tmp_path / "two") == _meta_without_out(tmp_path / "one")
    rows = read_pairs(tmp_path / "two")
    assert {r.id.split(":")[0] for r in rows} == {
        json.loads(p.read_text())["id"] for p in (tmp_path / "one" / "records").iterdir()}


def _cli(bench_root, tiny_reference, out: Path, *extra: str) -> list[str]:
    return [*extra, f"root={bench_root}", f"out={out}", f"checkpoint={tiny_reference}",
            "samples_per_positive=2", "steps=2", "max_items=3"]


def test_cli_shards_merge_resume_and_redo_a_changed_config(bench_root, tiny_reference, tmp_path,
                                                           capsys):
    """``--shard r --num-shards 2`` jobs (embedded scorers) give the one-job files; the job that
    completes the set merges; a rerun skips finished positives; another seed redoes them all."""
    assert pairs.main(_cli(bench_root, tiny_reference, tmp_path / "one")) == 0
    two = tmp_path / "two"
    assert pairs.main(_cli(bench_root, tiny_reference, two, *SHARD_0)) == 0
    assert not (two / "pairs.jsonl").exists()  # shard 1's positive is missing: no merge yet
    assert pairs.main(_cli(bench_root, tiny_reference, two, *SHARD_1)) == 0
    assert _files(two) == _files(tmp_path / "one")
    stamps = {p.name: p.stat().st_mtime_ns for p in (two / "records").iterdir()}
    capsys.readouterr()
    assert pairs.main(_cli(bench_root, tiny_reference, two)) == 0  # resume: nothing to do
    assert "rank 0/1: 0 processed, 3 already done (resumed)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (two / "records").iterdir()} == stamps
    assert pairs.main(_cli(bench_root, tiny_reference, two, "seed=1")) == 0  # another key
    assert "rank 0/1: 3 processed, 0 already done (resumed)" in capsys.readouterr().out
    assert json.loads((two / "pairs_config.json").read_text())["config"]["seed"] == 1
    with pytest.raises(SystemExit):
        pairs.main(_cli(bench_root, tiny_reference, two, "--shard", "2", "--num-shards", "2"))


@pytest.mark.slow
def test_two_process_launch_writes_the_one_process_pairs(bench_root, tiny_reference, tmp_path):
    """``accelerate launch`` with two gloo processes: each builds its slice, rank 0 merges; the
    files equal those of one launched process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def launch(n: int, out: Path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", *(["--multi_gpu"] * (n > 1)),
               "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", str(REPO / "generator" / "pairs.py"),
               *_cli(bench_root, tiny_reference, out, "device=auto")]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    launch(1, tmp_path / "one")
    proc = launch(2, tmp_path / "two")
    assert "rank 0/2: 2 processed" in proc.stdout and "rank 1/2: 1 processed" in proc.stdout
    assert _files(tmp_path / "two") == _files(tmp_path / "one")


@pytest.mark.parametrize("overrides, says", [
    (["samples_per_positive=1"], "samples_per_positive must be >= 2"),
    (["dilation_px=-2"], "dilation_px and max_items must be >= 0"),
    (["max_items=-3"], "dilation_px and max_items must be >= 0"),  # was: silently every positive
    (["split=bogus"], "split='bogus'; expected train | val | test"),
])
def test_config_mistakes_end_before_any_model_loads(overrides, says, tmp_path):
    from shared.config import ConfigError, load_config

    cfg = load_config(pairs.PairsConfig, None, [f"out={tmp_path / 'p'}", *overrides])
    with pytest.raises(ConfigError, match=says):
        pairs.check_pairs_config(cfg)


@pytest.mark.parametrize("checkpoint", ["/nope", "./runs/none", "runs/none/model"])
def test_a_missing_checkpoint_folder_is_named(checkpoint):
    from generator.build import load_generator
    from shared.config import ConfigError

    # was: diffusers' repo-id validation message ("Repo id must use alphanumeric chars")
    with pytest.raises(ConfigError, match=f"{checkpoint}: no such checkpoint folder"):
        load_generator(checkpoint)


@pytest.mark.parametrize("line, says", [
    ('{"kind": "sample"', "JSONDecodeError"),  # cut off mid-write
    ('[1, 2]', "TypeError"),  # not an object
    ('{"kind": "sample", "nope": 1}', "TypeError"),  # fields of another format
])
def test_a_malformed_pairs_row_is_named_with_its_line(tmp_path, line, says):
    from shared.io import InputError

    (tmp_path / "pairs.jsonl").write_text("\n" + line + "\n")
    with pytest.raises(InputError, match=f"pairs.jsonl, line 2: not a pairs row \\({says}"):
        pairs.read_pairs(tmp_path)  # was: the JSON/TypeError traceback
