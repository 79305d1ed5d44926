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
    assert "rank 0/2: 3 processed" in proc.stdout and "rank 1/2: 2 processed" in proc.stdout
    assert _snapshot(one) == _snapshot(two)


def _folder(root: Path, task: str, split: str, files: dict[str, tuple]) -> None:
    """A MedCLIP-SAMv2 split: files = {name: (image, mask or None)} (mask None = no mask file)."""
    import numpy as np

    from shared.io import write_png

    for name, (image, mask) in files.items():
        write_png(root / task / f"{split}_images" / name, np.asarray(image, np.float32))
        if mask is not None:
            write_png(root / task / f"{split}_masks" / name, np.asarray(mask, np.float32))


def _lesion(size=24):
    import numpy as np

    rng = np.random.default_rng(0)
    image = rng.random((size, size)).astype(np.float32)
    mask = np.zeros((size, size), np.float32)
    mask[8:13, 9:14] = 1.0
    return image, mask


def test_folder_item_ids_are_unique_per_file():
    """'x y.png' and 'x_y.png' (and 'a.png' / 'a.jpg') would share the id built from the stem;
    each gets its own, and unique stems keep the plain stem (fails if one negative overwrites
    another or the usual ids change)."""
    names = generate.item_names(["x y.png", "x_y.png", "a.png", "a.jpg", "benign (26).png"])
    assert len(set(names)) == 5
    assert names[4] == "benign_(26)"
    assert names[0].startswith("x_y.png-") and names[1].startswith("x_y.png-")
    assert names[2].startswith("a.png-") and names[3].startswith("a.jpg-")


def test_folder_image_without_mask_is_an_error_not_a_dropped_split(tmp_path):
    image, mask = _lesion()
    _folder(tmp_path, "liver", "train", {"a.png": (image, mask), "b.png": (image, None)})
    _folder(tmp_path, "liver", "test", {"c.png": (image, mask)})
    with pytest.raises(generate.DatasetError, match="b.png: no mask"):
        generate.list_items(tmp_path, split=None, domains=None)
    # a split that does not exist at all is simply not there
    assert [it.id for it in generate.list_items(tmp_path, split="test", domains=None)] == ["liver_test_c"]


def test_data_may_name_one_task_folder_as_the_evaluator_accepts(tmp_path):
    """--data DATA/liver (its splits directly under it) ended in "no tumor items found"."""
    image, mask = _lesion()
    _folder(tmp_path, "liver", "test", {"c.png": (image, mask)})
    _folder(tmp_path, "lung", "test", {"d.png": (image, mask)})
    by_task = generate.list_items(tmp_path / "liver", split="test", domains=None)
    assert [it.id for it in by_task] == ["liver_test_c"]
    assert by_task[0].image == tmp_path / "liver" / "test_images" / "c.png"
    assert [it.id for it in generate.list_items(tmp_path, split="test", domains=None)] == [
        "liver_test_c", "lung_test_d"]


def test_empty_masks_are_skipped_with_a_warning_and_scores_are_strict_json(
        tmp_path, tiny_pixel_dir, capsys):
    import numpy as np

    image, mask = _lesion()
    flat = np.zeros_like(image)  # no texture in the ring around c's lesion: its ratio is undefined
    _folder(tmp_path / "d", "liver", "test",
            {"a.png": (image, mask), "b.png": (image, np.zeros_like(mask)), "c.png": (flat, mask)})
    out = tmp_path / "out"
    args = ["--data", str(tmp_path / "d"), "--out", str(out), "--generator", str(tiny_pixel_dir),
            "--scorers", "none", "--num-samples", "1", "--steps", "1"]
    assert generate.main(args) == 0
    lines = (out / "manifest.jsonl").read_text().splitlines()
    ids = [json.loads(x)["id"] for x in lines]  # json.loads of strict JSON: no NaN tokens
    assert ids == ["liver_test_a", "liver_test_c"]
    assert all("NaN" not in x for x in lines)
    assert json.loads(lines[1])["negatives"][0]["scores"]["texture_ratio_ring"] is None
    assert [r.filename for r in read_dpo_csv(out / "dpo_pairs.csv")] == [
        "liver/test_images/a.png", "liver/test_images/c.png"]
    err = capsys.readouterr().err
    assert "1 item(s) skipped" in err and "b.png" in err and "empty mask" in err


def test_mask_covering_the_image_is_skipped_with_a_warning_naming_the_file(tmp_path, tiny_pixel_dir):
    """A mask that leaves no tissue to fill from aborted the whole run (rc 2) while an empty mask
    was skipped; it is now skipped the same way, with its reason, and the other items are made."""
    import numpy as np

    image, mask = _lesion()
    full = np.ones_like(image)
    full[0, 0] = 0.0  # one known pixel, inside the 2-px dilation
    _folder(tmp_path / "d", "liver", "test", {"z.png": (image, full), "y.png": (image, mask)})
    proc = subprocess.run(
        [sys.executable, str(REPO / "generator" / "generate.py"), "--data", str(tmp_path / "d"),
         "--out", str(tmp_path / "o"), "--generator", str(tiny_pixel_dir), "--scorers", "none",
         "--steps", "1"],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    warning = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warning) == 1 and "1 item(s) skipped" in warning[0] and "z.png" in warning[0]
    assert "covers the whole image" in warning[0] and "Traceback" not in proc.stderr
    rows = (tmp_path / "o" / "manifest.jsonl").read_text().splitlines()
    assert len(rows) == 1 and "y.png" in rows[0]


@pytest.mark.parametrize("extra, says", [
    (["--num-samples", "0"], "--num-samples must be >= 1, got 0"),
    (["--steps", "-1"], "--steps must be >= 1, got -1"),
    (["--limit", "-1"], "--limit must be >= 0, got -1"),  # was: every item but the last
    (["--threads", "0"], "--threads must be >= 1, got 0"),  # was: torch's traceback
    (["--strength", "nan"], r"--strength must lie in \(0, 1\], got nan"),
    (["--dilation-px", "-1"], "--dilation-px must be >= 0"),
    (["--method", "bogus"], "--method 'bogus'; expected one of"),
    (["--device", "gpu"], "--device 'gpu' is not a torch device"),
    (["--domains"], "--domains names no domain"),  # was: every domain
])
def test_bad_options_are_named_before_the_model_loads(small_bench, tmp_path, extra, says):
    from shared.config import ConfigError

    args = ["--data", str(small_bench), "--out", str(tmp_path / "o"), "--generator", "/nope", *extra]
    with pytest.raises(ConfigError, match=says):  # "/nope" would fail later: nothing loaded
        generate.main(args)
    assert not (tmp_path / "o").exists()


def test_misspelt_domain_and_changed_settings_on_resume_are_refused(small_bench, tiny_pixel_dir,
                                                                    tmp_path):
    from shared.config import ConfigError
    from shared.datasets import DatasetError

    with pytest.raises(DatasetError, match=r"--domains \['brian'\]: not domains/tasks"):
        generate.main(_args(small_bench, tmp_path / "o", tiny_pixel_dir, 1) + ["--domains", "brian"])
    out = tmp_path / "out"
    assert generate.main(_args(small_bench, out, tiny_pixel_dir, 1)) == 0
    again = _args(small_bench, out, tiny_pixel_dir, 1)
    again[again.index("--steps") + 1] = "3"
    with pytest.raises(ConfigError, match=r"holds negatives made with other settings \(params: "):
        generate.main(again)  # was: "0 generated, 1 skipped" (now "processed" / "already done") with the old 2-step negatives


def test_out_may_not_be_the_data_folder(small_bench, tmp_path):
    """Sixth sweep: --out DATA wrote manifest.jsonl into the data folder, and the next run read
    it as a benchmark manifest (KeyError)."""
    from shared.config import ConfigError

    args = _args(small_bench, small_bench, tmp_path, 1)
    with pytest.raises(ConfigError, match="is the --data folder"):
        generate.main(args)


def test_a_reader_error_names_the_file_once(tmp_path):
    """A non-binary mask's message came out as 'IMG (mask M): M: mask is not binary ...'."""
    import numpy as np

    from shared.io import NonBinaryMaskError, write_png

    image, mask = _lesion()
    write_png(tmp_path / "a.png", image)
    write_png(tmp_path / "m.png", mask.astype(np.float32) * 0.5)  # 0/128: not binary
    item = generate.Item("a", tmp_path / "a.png", tmp_path / "m.png", None, "c", "n")
    with pytest.raises(NonBinaryMaskError) as err:
        generate.process_item(item, None, None, None, tmp_path / "out")
    assert str(err.value).count("m.png") == 1 and "not binary" in str(err.value)


def test_a_rerun_redoes_items_whose_image_changed_and_csv_paths_stay_relative_to_data(
        tmp_path, tiny_pixel_dir, capsys, monkeypatch):
    """Sixth sweep: a rebuilt dataset in place kept the old negatives (the resume looked only at
    the record's presence: dpo_pairs.csv paired new positives with other images' negatives); and
    the CSV's positives were relative to the working directory of the first run (a symlinked
    image or a rerun from elsewhere wrote paths outside --data)."""
    import numpy as np

    from shared.io import write_png

    data = tmp_path / "my data"
    image, mask = _lesion()
    _folder(data, "liver", "train", {"a.png": (image, mask), "b.png": (image[::-1].copy(), mask)})
    real = tmp_path / "elsewhere" / "c.png"
    write_png(real, image.T.copy())
    (data / "liver" / "train_images" / "c.png").symlink_to(real)
    write_png(data / "liver" / "train_masks" / "c.png", mask)
    monkeypatch.chdir(tmp_path)
    args = ["--data", "my data", "--out", "out", "--generator", str(tiny_pixel_dir),
            "--scorers", "none", "--num-samples", "1", "--steps", "2"]
    assert generate.main(args) == 0
    rows = {r.filename for r in read_dpo_csv(tmp_path / "out" / "dpo_pairs.csv")}
    assert rows == {f"liver/train_images/{n}.png" for n in "abc"}
    capsys.readouterr()
    write_png(data / "liver" / "train_images" / "a.png", np.clip(image + 0.3, 0, 1))  # rebuilt
    monkeypatch.chdir(data)  # and run from another directory
    args[1], args[3] = ".", str(tmp_path / "out")
    assert generate.main(args) == 0
    said = capsys.readouterr().out
    assert "1 processed (1 redone: their image or mask changed since), 2 already done" in said
    record = json.loads((tmp_path / "out" / "records" / "liver_train_a.json").read_text())
    from shared.provenance import sha256_bytes

    assert record["image_sha256"] == sha256_bytes((data / "liver" / "train_images" / "a.png").read_bytes())
    rows = {r.filename for r in read_dpo_csv(tmp_path / "out" / "dpo_pairs.csv")}
    assert rows == {f"liver/train_images/{n}.png" for n in "abc"}


def test_records_of_another_checkpoint_are_redone(small_bench, tiny_pixel_dir, tmp_path, capsys):
    """The embedded default's hash changes when its composition does (session 20): a rerun into
    an --out made with the old one mixed old and new negatives (the resume check compares the
    --generator argument, the same None)."""
    out = tmp_path / "out"
    assert generate.main(_args(small_bench, out, tiny_pixel_dir, 2)) == 0
    rec = out / "records" / sorted(p.name for p in (out / "records").glob("*.json"))[0]
    data = json.loads(rec.read_text())
    data["checkpoint"] = "0" * 64  # as if made by another version of the same --generator
    rec.write_text(json.dumps(data))
    capsys.readouterr()
    assert generate.main(_args(small_bench, out, tiny_pixel_dir, 2)) == 0
    assert "1 processed, 1 already done" in capsys.readouterr().out
    assert json.loads(rec.read_text())["checkpoint"] != "0" * 64
