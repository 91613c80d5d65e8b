"""The replay check: recorded steps come back, new steps are new, changed steps raise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.model import EntryKind, JournalEntry
from pipeline.core.replay import JournalMismatch, expect_entry
from pipeline.errors import NonDeterminismError, PipelineError

RUN = EntryKind.RUN

Step = tuple[EntryKind, str]


def journal_of(steps: list[Step]) -> tuple[JournalEntry, ...]:
    return tuple(
        JournalEntry(i, kind, name, value=f"v{i}".encode()) for i, (kind, name) in enumerate(steps)
    )


def test_a_recorded_step_returns_its_entry() -> None:
    journal = journal_of([(RUN, "charge"), (RUN, "ship")])
    assert expect_entry(journal, 1, RUN, "ship") is journal[1]


def test_every_index_from_the_end_of_the_journal_on_is_a_new_step() -> None:
    journal = journal_of([(RUN, "charge")])
    assert expect_entry(journal, 1, RUN, "ship") is None
    assert expect_entry(journal, 2, RUN, "notify") is None
    assert expect_entry((), 0, RUN, "charge") is None


def test_a_renamed_step_raises_naming_both_sides() -> None:
    journal = journal_of([(RUN, "charge"), (RUN, "ship")])
    with pytest.raises(JournalMismatch) as caught:
        expect_entry(journal, 1, RUN, "deliver")
    error = caught.value
    assert (error.index, error.recorded_name, error.new_name) == (1, "ship", "deliver")
    assert (error.recorded_kind, error.new_kind) == (RUN, RUN)
    assert "index 1" in str(error)
    assert "'ship'" in str(error) and "'deliver'" in str(error)


def test_a_mismatch_is_a_retryable_non_determinism_error_under_the_root() -> None:
    journal = journal_of([(RUN, "charge")])
    with pytest.raises(NonDeterminismError):
        expect_entry(journal, 0, RUN, "refund")
    assert issubclass(JournalMismatch, PipelineError)


def test_a_negative_index_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="negative"):
        expect_entry(journal_of([(RUN, "charge")]), -1, RUN, "charge")


def test_a_journal_that_is_not_dense_is_rejected() -> None:
    journal = (JournalEntry(0, RUN, "a"), JournalEntry(2, RUN, "b"))
    with pytest.raises(ValueError, match="not dense"):
        expect_entry(journal, 1, RUN, "b")


names = st.text(alphabet="abcdefgh_", min_size=1, max_size=6)
steps_st = st.lists(st.tuples(st.sampled_from(list(EntryKind)), names), min_size=1, max_size=30)
# A kind can only be changed once there is more than one kind to change it to.
MUTATIONS = ["name", "kind"] if len(EntryKind) > 1 else ["name"]


@given(steps_st)
def test_replaying_the_same_steps_returns_every_entry(steps: list[Step]) -> None:
    journal = journal_of(steps)
    replayed = [expect_entry(journal, i, kind, name) for i, (kind, name) in enumerate(steps)]
    assert replayed == list(journal)
    assert expect_entry(journal, len(steps), RUN, "next") is None


@given(steps_st, st.data())
def test_any_single_change_raises_at_exactly_its_index(
    steps: list[Step], data: st.DataObject
) -> None:
    journal = journal_of(steps)
    at = data.draw(st.integers(0, len(steps) - 1), label="changed index")
    kind, name = steps[at]
    if data.draw(st.sampled_from(MUTATIONS), label="what changes") == "name":
        name = data.draw(names.filter(lambda n: n != steps[at][1]), label="new name")
    else:
        kind = data.draw(st.sampled_from([k for k in EntryKind if k != kind]), label="new kind")
    changed = [*steps[:at], (kind, name), *steps[at + 1 :]]

    for i in range(at):
        assert expect_entry(journal, i, *changed[i]) is journal[i]
    with pytest.raises(JournalMismatch) as caught:
        expect_entry(journal, at, *changed[at])
    assert caught.value.index == at
    assert (caught.value.recorded_kind, caught.value.recorded_name) == steps[at]
    assert (caught.value.new_kind, caught.value.new_name) == (kind, name)
