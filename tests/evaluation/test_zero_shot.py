import numpy as np
import pytest
import torch

from finetune.evaluation.clip_bundle import preprocess
from finetune.evaluation.evaluate import evaluate_classification
from finetune.evaluation.zero_shot import zero_shot_probs
from shared.io import read_image, write_png
from tests.evaluation.conftest import blob_image


def test_probs_equal_softmax_of_scaled_cosines(tiny_clip):
    images = [blob_image(i, (32, 40))[0] for i in range(3)]
    probs, classes = zero_shot_probs(tiny_clip, images, {"tumor": ["a tumor"], "normal": ["normal tissue"]},
                                     batch_size=2)
    assert classes == ["tumor", "normal"]
    with torch.no_grad():
        img = tiny_clip.model.encode_image(preprocess(tiny_clip, images)[0])
        txt = tiny_clip.model.encode_text(tiny_clip.tokenizer(["a tumor", "normal tissue"]))
        cos = torch.nn.functional.cosine_similarity(img[:, None], txt[None], dim=-1)
        want = (tiny_clip.model.logit_scale.exp() * cos).softmax(-1)
    torch.testing.assert_close(torch.from_numpy(probs), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=">= 2 classes"):
        zero_shot_probs(tiny_clip, images, {"tumor": ["a tumor"]})


def test_evaluate_classification_from_csv(tiny_clip, tmp_path):
    lines = ["image_path,class_label,caption"]
    for i in range(6):
        label = "tumor" if i % 2 else "normal"
        write_png(tmp_path / f"{i}.png", blob_image(i)[0] if label == "tumor" else np.full((40, 40), 0.3))
        lines.append(f"{i}.png,{label},{'a tumor' if label == 'tumor' else 'normal tissue'}")
    (tmp_path / "cls.csv").write_text("\n".join(lines) + "\n")
    m = evaluate_classification(tiny_clip, tmp_path / "cls.csv")
    probs, _ = zero_shot_probs(tiny_clip, [read_image(tmp_path / f"{i}.png") for i in range(6)],
                               {"normal": ["normal tissue"], "tumor": ["a tumor"]})
    from sklearn.metrics import roc_auc_score

    y = np.array([i % 2 for i in range(6)])
    assert m["per_class"]["tumor"]["auroc"] == pytest.approx(roc_auc_score(y, probs[:, 1]))
    assert m["n"] == 6 and 0 <= m["macro_fpr_at_tpr95"] <= 1
