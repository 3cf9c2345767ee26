"""plot_scores writes a readable PNG without touching pyplot's global state."""

from __future__ import annotations

import random
import struct
import sys

import pytest

from ctkd.eval.plot import plot_scores
from ctkd.eval.report import EvalReport


def _report(scores: list[float], metric: str = "token_f1") -> EvalReport:
    return EvalReport(metric=metric, score=sum(scores) / len(scores), n=len(scores), per_example=scores,
                      ids=[str(i) for i in range(len(scores))])  # fmt: skip


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plot_scores_writes_png(tmp_path):
    rng = random.Random(0)
    before = _report([rng.choice([0.0, 100.0, 50.0, 66.7]) for _ in range(136)])
    after = _report([rng.choice([0.0, 100.0, 100.0, 80.0]) for _ in range(136)])
    pyplot_loaded = "matplotlib.pyplot" in sys.modules
    path = plot_scores({"SFT": before, "MultiLevelOT": after}, tmp_path / "plots" / "qed.png")
    width, height = _png_size(path)
    assert (width, height) == (1320, 504)  # 11 x 4.2 inches at 120 dpi
    if not pyplot_loaded:  # plot_scores draws on a bare Figure and never imports pyplot itself
        assert "matplotlib.pyplot" not in sys.modules


def test_plot_scores_single_report_and_errors(tmp_path):
    path = plot_scores({"only": _report([42.0])}, tmp_path / "one.png", title="one example")
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="at least one report"):
        plot_scores({}, tmp_path / "none.png")
