import numpy as np
import pytest

from finetune.evaluation.metrics_report import (
    MissingPredictionError,
    class_prompts_from_rows,
    classification_metrics,
    fpr_at_tpr,
    read_classification_csv,
    score_folders,
    score_pair,
    score_predictions,
    summarize,
    summarize_scores,
)
from shared.io import write_png


def _square(h, w, r0, r1, c0, c1):
    m = np.zeros((h, w), dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def test_score_pair_hand_values():
    pred = _square(10, 10, 2, 4, 2, 4)  # 4 px
    gt = _square(10, 10, 2, 4, 2, 5)  # 6 px, contains pred
    s = score_pair("a.png", pred, gt)
    assert s.dice == pytest.approx(2 * 4 / 10)
    assert s.iou == pytest.approx(4 / 6)
    assert 0 < s.nsd <= 1
    empty = np.zeros((10, 10), bool)
    assert score_pair("n.png", empty, empty).dice == 1.0  # both empty: stated convention
    assert score_pair("m.png", empty, gt).dice == 0.0


def test_pairing_by_name_and_missing_prediction_is_an_error():
    gt = {"b.png": _square(6, 6, 0, 2, 0, 2), "a.png": _square(6, 6, 1, 3, 1, 3)}
    preds = {"a.png": gt["a.png"], "b.png": np.zeros((6, 6), bool)}
    scores = score_predictions(preds, gt)
    assert [s.name for s in scores] == ["a.png", "b.png"]
    assert [s.dice for s in scores] == [1.0, 0.0]
    with pytest.raises(MissingPredictionError, match="b.png"):
        score_predictions({"a.png": gt["a.png"]}, gt)
    with pytest.raises(MissingPredictionError, match="c.png"):
        score_predictions({**preds, "c.png": gt["a.png"]}, gt)


def test_score_folders(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    gt = _square(8, 8, 0, 4, 0, 4)
    write_png(tmp_path / "g" / "x.png", gt)
    write_png(tmp_path / "g" / "y.png", gt)
    write_png(tmp_path / "p" / "x.png", _square(8, 8, 0, 4, 0, 2))
    with pytest.raises(MissingPredictionError, match="y.png"):
        score_folders(tmp_path / "p", tmp_path / "g")
    write_png(tmp_path / "p" / "y.png", gt)
    scores = score_folders(tmp_path / "p", tmp_path / "g")
    assert [round(s.dice, 6) for s in scores] == [round(2 * 8 / 24, 6), 1.0]
    write_png(tmp_path / "p" / "z.png", gt)  # a stray prediction: the folders no longer pair up
    with pytest.raises(MissingPredictionError, match="z.png: prediction has no ground truth"):
        score_folders(tmp_path / "p", tmp_path / "g")


def test_summary_mean_std_ci():
    s = summarize([0.0, 1.0, 0.5, 0.5])
    assert s["mean"] == pytest.approx(0.5)
    assert s["std"] == pytest.approx(np.std([0, 1, 0.5, 0.5], ddof=1))
    assert s["ci_low"] <= 0.5 <= s["ci_high"] and s["n"] == 4
    scores = [score_pair("a", _square(4, 4, 0, 2, 0, 2), _square(4, 4, 0, 2, 0, 2))] * 3
    assert summarize_scores(scores)["dice"] == {"n": 3, "mean": 1.0, "std": 0.0, "ci_low": 1.0, "ci_high": 1.0}


def test_classification_hand_values():
    labels = ["a", "a", "b", "b"]
    pa = np.array([0.9, 0.4, 0.6, 0.1])
    probs = np.stack([pa, 1 - pa], axis=1)
    m = classification_metrics(labels, probs, ["a", "b"])
    # class a: positives {.9, .4}, negatives {.6, .1}: 3 of 4 pairs ordered -> AUROC .75;
    # TPR >= .95 needs threshold .4, where negative .6 is also above -> FPR .5. Same for b.
    assert m["per_class"]["a"] == pytest.approx({"auroc": 0.75, "fpr_at_tpr95": 0.5})
    assert m["per_class"]["b"] == pytest.approx({"auroc": 0.75, "fpr_at_tpr95": 0.5})
    assert m["macro_auroc"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.5)  # rows 1 and 2 are argmax-wrong
    assert fpr_at_tpr(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    with pytest.raises(ValueError, match="probs"):
        classification_metrics(labels, probs[:3], ["a", "b"])


def test_read_classification_csv(tmp_path):
    p = tmp_path / "cls.csv"
    p.write_text(
        "image_path,class_label,caption\n"
        "imgs/1.png,benign,\"A breast ultrasound, benign tumor.\"\n"
        "imgs/2.png,normal,A normal breast ultrasound.\n"
        "/abs/3.png,benign,A breast ultrasound with a benign mass.\n"
    )
    rows = read_classification_csv(p)
    assert rows[0].image_path == tmp_path / "imgs/1.png" and rows[2].image_path.as_posix() == "/abs/3.png"
    assert class_prompts_from_rows(rows) == {
        "benign": ["A breast ultrasound, benign tumor.", "A breast ultrasound with a benign mass."],
        "normal": ["A normal breast ultrasound."],
    }
    (tmp_path / "bad.csv").write_text("path,label\nx,y\n")
    with pytest.raises(ValueError, match="header"):
        read_classification_csv(tmp_path / "bad.csv")
