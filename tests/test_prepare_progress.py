"""``prepare`` counts the items it writes on a progress bar on a terminal, and stays quiet elsewhere."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest

from mmrec_lightning.data.prepare import with_progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


BATCHES = [pa.record_batch({"item": list(range(start, start + 25))}) for start in (0, 25, 50)]


@pytest.mark.parametrize(
    ("stream", "ci", "shown"), [(Terminal, "", True), (Terminal, "true", False), (io.StringIO, "", False)]
)
def test_prepare_shows_item_progress_only_on_a_terminal_outside_ci(monkeypatch, stream, ci, shown):
    stderr = stream()
    monkeypatch.setattr("sys.stderr", stderr)
    monkeypatch.setenv("CI", ci)
    assert list(with_progress(iter(BATCHES))) == BATCHES  # the batches pass through untouched
    assert ("items: 75 items" in stderr.getvalue()) is shown
    assert (stderr.getvalue() == "") is not shown
