import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from generator import generate
from shared.datasets import read_dpo_csv

REPO = Path(__file__).resolve().parents[2]


def _args(bench, out, ckpt, limit):
    return ["--data", str(bench), "--out", str(out), "--generator", str(ckpt), "--scorers", "none",
            "--split", "train", "--num-samples", "2", "--steps", "2", "--limit", str(limit)]


def _snapshot(out: Path) -> dict[str, bytes]:
    files = sorted((out / "negatives").glob("*.png")) + [out / "manifest.jsonl", out / "dpo_pairs.csv"]
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


def test_generate_writes_manifest_csv_and_resumes(small_bench, tiny_pixel_dir, tmp_path):
    out = tmp_path / "out"
    assert generate.main(_args(small_bench, out, tiny_pixel_dir, 2)) == 0
    records = sorted((out / "records").glob("*.json"))
    assert len(records) == 2
    first = {p.name: p.stat().st_mtime_ns for p in records}
    assert generate.main(_args(small_bench, out, tiny_pixel_dir, 4)) == 0
    records = sorted((out / "records").glob("*.json"))
    assert len(records) == 4
    for p in records:  # finished items were not redone
        if p.name in first:
            assert p.stat().st_mtime_ns == first[p.name]
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == sorted(r["id"] for r in lines) and len(lines) == 4
    rec = lines[0]
    assert len(rec["negatives"]) == 2 and rec["negatives"][0]["seed"] == 0
    assert rec["negatives"][0]["scores"]["outside_max_abs_diff"] == 0.0
    assert "psnr" in rec["negatives"][0]["scores"]  # GT negative of the benchmark was scored
    assert len(rec["negatives"][0]["content_key"]) == 64
    rows = read_dpo_csv(out / "dpo_pairs.csv")
    assert len(rows) == 4 and (out / rows[0].filename_neg).is_file()
    assert (small_bench / rows[0].filename).is_file()


@pytest.mark.slow
def test_two_process_launch_writes_the_same_files(small_bench, tiny_pixel_dir, tmp_path):
    one = tmp_path / "one"
    assert generate.main(_args(small_bench, one, tiny_pixel_dir, 5)) == 0
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(REPO / "generator" / "generate.py"), *_args(small_bench, two, tiny_pixel_dir, 5)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each rank generated its own share (3 + 2 of 5), not all items twice
    assert "rank 0/2: 3 generated" in proc.stdout and "rank 1/2: 2 generated" in proc.stdout
    assert _snapshot(one) == _snapshot(two)
