"""Runs every tests/core/testdata/*.txt transcript as its own test case (transcripts.py).

RAFTKV_REWRITE=1 rewrites the expected sections from the actual output; review the diff line by
line before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .transcripts import REWRITE_ENV, TranscriptError, run_file, run_text

TESTDATA = Path(__file__).parent / "testdata"
FILES = sorted(TESTDATA.glob("*.txt"))


def test_there_are_transcripts() -> None:
    assert FILES, f"no transcripts under {TESTDATA}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_transcript(path: Path) -> None:
    result = run_file(path, rewrite=os.environ.get(REWRITE_ENV) == "1")
    if result.mismatches:
        pytest.fail("\n\n".join(result.mismatches), pytrace=False)


# ---------------------------------------------------------------------------------------------
# Negative controls: the runner itself must notice a wrong expectation.

GOOD = """\
# A comment.
add-nodes 3
----
t=0 nodes=1,2,3
election=1-2 heartbeat=0.1 lease=0.5 drift=0 read-mode=lease
leader_lease_span=0.5 drift_stretch=1

status 1
----
1: follower term=0 leader=none vote=none log=0 commit=0 applied=0 lease_remaining=0 \
waiting_for_old_lease=0
"""


def test_a_correct_transcript_passes() -> None:
    assert run_text(GOOD).mismatches == []


def test_a_wrong_expected_line_is_reported_with_a_diff() -> None:
    wrong = GOOD.replace("1: follower term=0", "1: leader term=0")
    result = run_text(wrong, "wrong.txt")
    assert len(result.mismatches) == 1
    (report,) = result.mismatches
    assert report.startswith("wrong.txt:8: status 1")
    assert "-1: leader term=0" in report and "+1: follower term=0" in report
    # Rewriting restores the correct expectation, and everything else verbatim.
    assert result.rewritten == GOOD


def test_missing_output_is_a_mismatch_too() -> None:
    truncated = GOOD.replace("leader_lease_span=0.5 drift_stretch=1\n", "")
    assert len(run_text(truncated).mismatches) == 1


def test_an_unknown_command_is_an_error_naming_its_line() -> None:
    with pytest.raises(TranscriptError, match=r"bad.txt:8: frobnicate"):
        run_text(GOOD.split("status")[0] + "frobnicate 1\n----\nok\n", "bad.txt")
