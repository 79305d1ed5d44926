import json

import pytest

from finetune.evaluation.prompts import PromptError, load_prompts, parse_prompts, single_prompt


def test_precedence_exact_then_glob_then_default():
    ps = parse_prompts(
        "# comment\n"
        "A scan with a tumor.\n"
        "benign* | A benign mass.\n"
        "benign* | A smooth benign mass.   # ensemble member\n"
        "malignant* | A spiculated malignant mass.\n"
        "benign (3).png | The special one.\n"
    )
    assert ps.for_image("benign (1).png") == ["A benign mass.", "A smooth benign mass."]
    assert ps.for_image("benign (3).png") == ["The special one."]
    assert ps.for_image("malignant (9).png") == ["A spiculated malignant mass."]
    assert ps.for_image("other.png") == ["A scan with a tumor."]


def test_no_match_without_default_is_an_error(tmp_path):
    ps = parse_prompts("a* | x\n")
    with pytest.raises(PromptError, match="b.png"):
        ps.for_image("b.png")
    with pytest.raises(PromptError, match="no prompts"):
        parse_prompts("# only a comment\n")
    with pytest.raises(PromptError, match="line 1"):
        parse_prompts(" | caption without key\n")
    with pytest.raises(PromptError, match="cannot read"):
        load_prompts(tmp_path / "missing.txt")


def test_upstream_json_and_single(tmp_path):
    p = tmp_path / "busi.json"
    p.write_text(json.dumps({"000001.png": "A benign tumor.", "000002.png": "A malignant tumor."}))
    ps = load_prompts(p)
    assert ps.for_image("000002.png") == ["A malignant tumor."]
    with pytest.raises(PromptError):
        ps.for_image("000003.png")
    assert single_prompt(" a tumor ").for_image("anything") == ["a tumor"]


def test_shipped_prompt_files_parse():
    from finetune.evaluation.cli import PROMPT_DIR
    from shared.benchmark import DOMAINS

    for domain in DOMAINS:
        ps = load_prompts(PROMPT_DIR / f"{domain}.txt")
        assert ps.for_image("x.png")
