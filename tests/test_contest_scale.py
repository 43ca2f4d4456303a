"""A contest-shaped task file (every task type, LFW-framed deepfake pairs) through `genserve run` on the demo
stack, killed at half and resumed: the suite's small version of the 1000-row measurement in docs/contest.md."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_a_killed_contest_run_resumes_without_redoing_or_losing_rows_and_its_memory_stays_flat(tmp_path):
    from genserve.benchmarks.contest_scale import measure

    figures = measure(tmp_path, rows_per_task=10, kill_at=20, concurrency=4)
    first, second = figures["first_run"], figures["second_run"]
    assert first["killed"] and 20 <= figures["killed_after_rows"] < 40, figures
    assert second["returncode"] == 0, figures["second_run_output"]
    assert second["rows_added"] == 40 - figures["killed_after_rows"]  # the rerun did the rest, and only that
    assert figures["rows_redone"] == 0 and figures["rows_failed"] == 0  # every LFW-framed pair swapped
    assert figures["submission_findings"] == [] and figures["rows_in_submission"] == 40
    # No growth with rows: the second run (rows 20-40) peaks where the first (rows 0-20) did.
    assert second["peak_rss_mib"] <= 1.15 * first["peak_rss_mib"] + 5, (first, second)
