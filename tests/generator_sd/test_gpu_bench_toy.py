"""``bench/gpu_sd_inpaint.py`` (issue 19's one-shot GPU benchmark) at toy size on the CPU.

The GPU run happens once, in a session that is lent a device; this checks beforehand that the
same code measures every row (DPO LoRA / full × gradient checkpointing on / off, inference per
dtype and batch size, the guidance-7.5 anchor row) with finite positive numbers, and that a
failing part or an exhausted time budget becomes a row's status instead of a crash.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench/gpu_sd_inpaint.py"
BATCHES = (1, 4, 8, 16)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_sd_inpaint", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _positive(row: dict, *keys: str) -> None:
    for k in keys:
        assert isinstance(row.get(k), float | int), f"{k} missing in {row}"
        assert math.isfinite(row[k]) and row[k] > 0, f"{k}={row[k]} in {row}"


def _read(out: Path) -> tuple[str, list[dict]]:
    return (out / "gpu_sd_inpaint.md").read_text(), json.loads(
        (out / "gpu_sd_inpaint.json").read_text())["rows"]


def test_toy_run_measures_every_row(bench, tmp_path):
    torch.manual_seed(0)
    # bf16 only (fp16 convolutions are ~10x slower on a CPU; the fp16 rows are checked below)
    assert bench.main(["--toy", "--device", "cpu", "--out", str(tmp_path), "--dtypes", "bf16",
                       "--dpo-warmup", "0", "--dpo-steps", "1", "--infer-steps", "1",
                       "--infer-timed", "1"]) == 0
    md, rows = _read(tmp_path)

    dpo = {(r["adapter"], r["checkpointing"]): r for r in rows if r["part"] == "dpo"}
    assert set(dpo) == {("lora", True), ("lora", False), ("full", True), ("full", False)}
    for (adapter, ckpt), r in dpo.items():
        assert r["status"] == "ok", r
        _positive(r, "step_s", "step_s_min", "setup_gib", "peak_gib", "grad_norm", "trained_params")
        assert math.isfinite(r["loss"])
        assert r["batch_pairs"] == 4 and r["precision"] == "bf16" and r["steps"] == 1
        if adapter == "lora":  # only the adapters train: rank 8 on to_q/k/v/out.0
            assert r["trained_params"] < 0.1 * r["unet_params"]
        else:
            assert r["trained_params"] == r["unet_params"]
        assert f"| {adapter} | {'on' if ckpt else 'off'} | {r['trained_params']:,} of" in md

    inf = {(r["dtype"], r["batch"], r["guidance"]): r for r in rows if r["part"] == "inference"}
    assert set(inf) == {("bf16", b, 1.0) for b in BATCHES}
    for (dtype, batch, guidance), r in inf.items():
        assert r["status"] == "ok", r
        _positive(r, "batch_s", "images_per_s", "s_per_image", "peak_gib")
        assert r["images_per_s"] == pytest.approx(batch / r["batch_s"])
        assert r["s_per_image"] == pytest.approx(r["batch_s"] / batch)
        assert any(line.startswith(f"| {dtype} | {batch} | {guidance:g} | ") and line.endswith("| ok |")
                   for line in md.splitlines()), (dtype, batch, guidance)
    assert "Best: " in md and "1.59 s/image" in md


def test_fp16_and_anchor_rows_and_an_oom_is_a_row(bench, tmp_path, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(bench, "dpo_part", oom)  # e.g. full fine-tuning on a small GPU
    assert bench.main(["--toy", "--device", "cpu", "--out", str(tmp_path / "oom"),
                       "--dtypes", "fp16", "--batches", "1", "--infer-steps", "1",
                       "--infer-timed", "1"]) == 0
    md, rows = _read(tmp_path / "oom")
    assert [r["status"] for r in rows if r["part"] == "dpo"] == ["OOM"] * 4
    assert md.count("| OOM |") == 4
    inf = {(r["dtype"], r["batch"], r["guidance"]): r for r in rows if r["part"] == "inference"}
    assert set(inf) == {("fp16", 1, 1.0), ("fp16", 1, 7.5)}  # + the CFG row for the A100 anchor
    for r in inf.values():
        assert r["status"] == "ok", r
        _positive(r, "batch_s", "images_per_s", "s_per_image", "peak_gib")


def test_parts_after_the_time_budget_are_skipped(bench, tmp_path):
    assert bench.main(["--toy", "--device", "cpu", "--out", str(tmp_path / "late"),
                       "--budget-s", "0"]) == 0
    _, rows = _read(tmp_path / "late")
    assert len(rows) == 4 + 2 * len(BATCHES) + 1
    assert {r["status"] for r in rows} == {"skipped: time budget"}
