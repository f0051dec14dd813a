"""The lab's check of the real cutover's window (tests/lab/cutover_lab.window_closed) refuses
what it must: a prober that never saw the old site, or never the new one, or a downtime past
the bound. (The lab journey itself needs real VMs: this shows its assertion can fail.)"""

from __future__ import annotations

import pytest

from tests.lab.cutover_lab import DOWNTIME_LIMIT_S, window_closed

GOOD = ("downtime 3.09s: last good answer from the old site at 3.96s, first from the new site "
        "at 7.05s, 14 failed requests between (51 probes)")


def test_a_window_seen_closing_passes():
    assert window_closed({"downtime_s": 3.0912}, GOOD) == GOOD


@pytest.mark.parametrize("summary, downtime", [
    ("the new site never answered (40 probes)", None),
    ("downtime 7.05s: last good answer from the old site at never, first from the new site at "
     "7.05s, 0 failed requests between (40 probes)", 7.05),
    (GOOD.replace("3.09s", "75.00s").replace("7.05s", "78.96s"), 75.0),
    (GOOD, 9.5),  # the run's figure is not the prober's
])
def test_a_window_not_seen_closing_fails(summary, downtime):
    with pytest.raises(AssertionError):
        window_closed({"downtime_s": downtime}, summary)
    assert DOWNTIME_LIMIT_S == 60.0
