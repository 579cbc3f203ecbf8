import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import seeds  # noqa: E402


def test_seed_summary_is_mean_and_sample_std_per_model_and_metric():
    runs = [{"M": {"recall@20": 0.1}}, {"M": {"recall@20": 0.3}}]
    summary = seeds.summarise(runs)
    assert summary["M"]["recall@20"]["mean"] == pytest.approx(0.2)
    assert summary["M"]["recall@20"]["std"] == pytest.approx(0.1414213, rel=1e-5)
    assert "0.2000 ± 0.1414" in seeds.table(summary)
