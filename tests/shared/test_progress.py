"""Readable logs: plain progress lines off a terminal, and one Sinkhorn warning per run."""

from __future__ import annotations

import io
import warnings

import torch

from shared.progress import LineProgress, progress


def test_line_progress_prints_every_n_steps_and_the_end():
    out = io.StringIO()
    bar = LineProgress(range(7), desc="train", every=3, file=out)
    seen = []
    for i in bar:
        seen.append(i)
        bar.set_postfix(loss=f"{i:.1f}")
    lines = out.getvalue().splitlines()
    assert seen == list(range(7))
    assert [ln.split(",")[0] for ln in lines] == ["train: 3/7 (43%)", "train: 6/7 (86%)",
                                                  "train: 7/7 (100%)"]
    assert lines[-1].endswith("loss=6.0") and "\r" not in out.getvalue()


def test_line_progress_resumes_from_initial_and_stays_quiet_when_disabled():
    out = io.StringIO()
    bar = LineProgress(total=10, initial=4, desc="x", every=5, file=out)
    bar.update(5)
    bar.update(1)
    bar.close()
    assert [ln.split(",")[0] for ln in out.getvalue().splitlines()] == ["x: 9/10 (90%)",
                                                                       "x: 10/10 (100%)"]
    quiet = io.StringIO()
    off = LineProgress(total=3, every=1, disable=True, file=quiet)
    off.update(3)
    off.close()
    assert quiet.getvalue() == ""


def test_progress_off_a_terminal_is_line_based():
    assert isinstance(progress(range(3)), LineProgress)  # pytest's stderr is no terminal


def test_sinkhorn_warns_once_and_counts_every_unconverged_solve():
    from finetune.ot import not_converged_count, sinkhorn_log

    not_converged_count(reset=True)
    torch.manual_seed(0)
    cost = torch.rand(1, 6, 5) * 10
    a, b = torch.full((1, 6), 1 / 6), torch.full((1, 5), 1 / 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            sinkhorn_log(cost, a, b, eps=0.01, n_iter=1)
        sinkhorn_log(cost, a, b, eps=1.0, n_iter=500)  # this one converges
    assert len([w for w in caught if "Sinkhorn not converged" in str(w.message)]) == 1
    assert not_converged_count(reset=True) == 3 and not_converged_count() == 0
