"""Text distortions: determinism per seed, affected rate close to the severity, bad input."""

from __future__ import annotations

import random

import pytest

from glue_eval.distortion import (
    CHAR_EDITS,
    DISTORTIONS,
    KEYBOARD_NEIGHBOURS,
    DistortionError,
    distort,
    distort_texts,
    distort_with_stats,
    row_rng,
    severity_schedule,
)

WORDS = (
    "The quick brown Fox jumps over the lazy dog , and Alice said : it's a well-made film ! "
    "Nobody expected the Spanish Inquisition . Its chief weapon is surprise ; fear and ruthless efficiency ?"
).split()


def long_text(n_words: int = 6000, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words)) + " "


@pytest.mark.parametrize("name", DISTORTIONS)
def test_same_seed_same_output_other_seed_other_output(name):
    text = long_text(400)
    assert distort(text, name, 0.3, seed=7) == distort(text, name, 0.3, seed=7)
    assert distort(text, name, 0.3, seed=7) != distort(text, name, 0.3, seed=8)
    batch = distort_texts([text, text], name, 0.3, seed=7)
    assert batch == distort_texts([text, text], name, 0.3, seed=7)
    assert batch[0] != batch[1]  # rows get their own noise


def test_a_row_is_distorted_the_same_whatever_the_other_rows():
    a, b, c = long_text(50, 1), long_text(50, 2), long_text(50, 3)
    assert distort_texts([a, b], "char_noise", 0.4, seed=3)[1] == distort_texts([c, b], "char_noise", 0.4, seed=3)[1]
    # the second text of a pair (field 1) gets noise independent of the first
    assert distort_texts([a], "keyboard", 0.5, seed=3, field=0) != distort_texts([a], "keyboard", 0.5, seed=3, field=1)


@pytest.mark.parametrize("name", DISTORTIONS)
@pytest.mark.parametrize("severity", [0.1, 0.3, 0.7])
def test_affected_rate_is_close_to_severity_on_long_text(name, severity):
    text = long_text()
    out, stats = distort_with_stats(text, name, severity, row_rng(0, name, 0))
    assert stats.eligible > 2000
    assert abs(stats.rate - severity) < 0.03
    before, after = text.split(), out.split()
    if name in (*CHAR_EDITS, "char_noise"):
        # one edit per selected word, word count kept: count the words that changed
        assert len(before) == len(after)
        changed = sum(x != y for x, y in zip(before, after))
        assert changed == stats.affected
    elif name == "word_dropout":
        words = [w for w in before if any(ch.isalnum() for ch in w)]
        assert len(before) - len(after) == stats.affected
        assert abs(stats.affected / len(words) - severity) < 0.03
    else:
        assert stats.affected > 0
        assert sum(ch.isupper() for ch in out) < sum(ch.isupper() for ch in text)


@pytest.mark.parametrize("name", DISTORTIONS)
def test_severity_zero_is_identity_and_one_affects_every_unit(name):
    text = "  Hello, World ! It's a well-made film .  "
    assert distort(text, name, 0.0, seed=1) == text
    out, stats = distort_with_stats(text, name, 1.0, row_rng(1, name, 0))
    if name == "word_dropout":
        assert stats.affected == stats.eligible - 1  # one word always stays
    else:
        assert stats.affected == stats.eligible > 0
    assert out.strip()


def test_edits_do_what_they_say():
    rng = random.Random(0)
    word = "Keyboard"
    swapped = distort_with_stats(word, "char_swap", 1.0, rng)[0]
    assert sorted(swapped) == sorted(word) and swapped != word
    assert len(distort_with_stats(word, "char_drop", 1.0, rng)[0]) == len(word) - 1
    assert len(distort_with_stats(word, "char_insert", 1.0, rng)[0]) == len(word) + 1
    typo = distort_with_stats(word, "keyboard", 1.0, rng)[0]
    diffs = [(a, b) for a, b in zip(word, typo) if a != b]
    assert len(diffs) == 1 and diffs[0][1].lower() in KEYBOARD_NEIGHBOURS[diffs[0][0].lower()]
    assert distort_with_stats("Don't STOP, now!", "case_punct", 1.0, rng)[0] == "dont stop now"
    assert distort("one two three four", "word_dropout", 1.0, seed=4).count(" ") == 0  # a single word is left


def test_keyboard_neighbours_are_symmetric():
    for key, near in KEYBOARD_NEIGHBOURS.items():
        assert near and all(key in KEYBOARD_NEIGHBOURS[other] for other in near)


def test_texts_without_eligible_units_are_left_alone():
    assert distort("...", "char_swap", 1.0) == "..."
    assert distort(". ,", "case_punct", 1.0) == ". ,"  # would be empty: left as it is
    assert distort("", "word_dropout", 1.0) == ""


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf"), True, "0.3", None])
def test_bad_severity_is_a_clear_error(bad):
    with pytest.raises(DistortionError, match=r"severity must be a number in \[0, 1\]"):
        distort("some text", "keyboard", bad)


def test_unknown_distortion_is_a_clear_error():
    with pytest.raises(DistortionError, match="unknown distortion 'blur'; known: char_swap"):
        distort("some text", "blur", 0.1)
    with pytest.raises(ValueError):  # DistortionError is a ValueError
        distort_texts(["a"], "rotate", 0.1)


def test_mismatched_severities_and_bad_schedule():
    with pytest.raises(DistortionError, match="2 texts but 1 severities"):
        distort_texts(["a b", "c d"], "keyboard", [0.1])
    with pytest.raises(DistortionError, match="low <= high"):
        severity_schedule(5, 0.5, 0.1)
    mix = severity_schedule(1000, 0.05, 0.5, seed=2)
    assert mix == severity_schedule(1000, 0.05, 0.5, seed=2)
    assert 0.05 <= min(mix) and max(mix) <= 0.5 and abs(sum(mix) / len(mix) - 0.275) < 0.02
