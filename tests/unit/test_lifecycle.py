"""The lifecycle table: legal moves only, and the README's diagram is the table's."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.lifecycle import (
    TRANSITIONS,
    IllegalTransition,
    InvocationStatus,
    Transition,
    state_diagram,
    transition,
)


def test_final_statuses_have_no_way_out() -> None:
    for status in InvocationStatus:
        moves = [move for (source, move) in TRANSITIONS if source is status]
        assert (moves == []) == status.is_final


def test_an_illegal_move_raises_with_both_sides() -> None:
    with pytest.raises(IllegalTransition, match="'complete' from status 'pending'"):
        transition(InvocationStatus.PENDING, Transition.COMPLETE)


def test_readme_shows_the_generated_diagram() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert state_diagram() in readme, "regenerate the diagram: print(state_diagram())"
