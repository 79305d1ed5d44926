import numpy as np
import pytest

from shared.datasets import (
    DatasetError,
    DpoRow,
    list_pairs,
    list_tasks,
    read_dpo_csv,
    write_dpo_csv,
)
from shared.io import write_png


def _layout(root, names, mask_names=None):
    for n in names:
        write_png(root / "busi" / "train_images" / n, np.zeros((4, 4)))
    for n in mask_names if mask_names is not None else names:
        write_png(root / "busi" / "train_masks" / n, np.zeros((4, 4), bool))


def test_pairs_by_name_sorted(tmp_path):
    _layout(tmp_path, ["b (2).png", "a (1).png", "c.png"])
    pairs = list_pairs(tmp_path, "busi", "train")
    assert [p.name for p in pairs] == ["a (1).png", "b (2).png", "c.png"]
    assert all(p.image_path.name == p.mask_path.name for p in pairs)
    assert list_tasks(tmp_path) == ["busi"]


def test_missing_partner_is_named(tmp_path):
    _layout(tmp_path, ["a.png", "b.png"], ["a.png"])
    with pytest.raises(DatasetError, match="b.png: no mask"):
        list_pairs(tmp_path, "busi", "train")
    with pytest.raises(DatasetError, match="val_images: folder missing"):
        list_pairs(tmp_path, "busi", "val")


def test_dpo_csv_both_headers_and_round_trip(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text('filename,filename_neg,Caption,Caption_neg\n'
                 'BUSI3/train_images/benign (26).png, gen/benign (26).png, '
                 '"A breast ultrasound, benign tumor.", "No signs of pathology."\n')
    b = tmp_path / "b.csv"
    b.write_text("imagepath,imagepath_neg,caption,caption_neg\nx.png,y.png,pos,neg\n")
    rows = read_dpo_csv(a)
    assert rows == [DpoRow("BUSI3/train_images/benign (26).png", "gen/benign (26).png",
                           "A breast ultrasound, benign tumor.", "No signs of pathology.")]
    assert read_dpo_csv(b) == [DpoRow("x.png", "y.png", "pos", "neg")]
    bom = tmp_path / "bom.csv"  # as a spreadsheet saves it: UTF-8 with a byte-order mark
    bom.write_text("imagepath,imagepath_neg,caption,caption_neg\nx.png,y.png,pos,neg\n",
                   encoding="utf-8-sig")
    assert read_dpo_csv(bom) == [DpoRow("x.png", "y.png", "pos", "neg")]
    out = write_dpo_csv(tmp_path / "c.csv", rows)
    assert out.read_text().splitlines()[0] == "filename,filename_neg,Caption,Caption_neg"
    assert read_dpo_csv(out) == rows
    bad = tmp_path / "bad.csv"
    bad.write_text("img,neg\n")
    with pytest.raises(DatasetError, match="unknown header"):
        read_dpo_csv(bad)


def test_a_binary_dpo_csv_is_named(tmp_path):
    from shared.datasets import DatasetError, read_dpo_csv

    (tmp_path / "pairs.csv").write_bytes(b"\xff\xfe\x00garbage\x89PNG")
    with pytest.raises(DatasetError, match="pairs.csv: not a UTF-8 text CSV"):  # was UnicodeDecodeError
        read_dpo_csv(tmp_path / "pairs.csv")


def test_files_that_are_not_images_are_named_and_hidden_files_passed_over(tmp_path, capsys):
    """A DICOM beside the PNGs was dropped without a word, and macOS's ``._a.png`` (not an image)
    aborted the run as unreadable."""
    _layout(tmp_path, ["a.png"])
    (tmp_path / "busi" / "train_images" / "b.dcm").write_bytes(b"DICM")
    (tmp_path / "busi" / "train_images" / "._a.png").write_bytes(b"\x00\x05\x16\x07")
    (tmp_path / "busi" / "train_masks" / ".DS_Store").write_bytes(b"\x00")
    pairs = list_pairs(tmp_path, "busi", "train")
    assert [p.name for p in pairs] == ["a.png"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train_images: 1 file(s)" in err and "b.dcm" in err
    assert "shared.io.read_dicom" in err and "._a.png" not in err
