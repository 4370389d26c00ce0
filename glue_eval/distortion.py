"""Text distortions with a severity knob and a seed: typing / OCR character noise, word dropout, casing and
punctuation loss (DESIGN.md section 7, issue 6).

Pure Python (no model, no numpy). Every distortion works on the whitespace-separated tokens of a text and keeps
the whitespace between the tokens it leaves in place. ``severity`` in [0, 1] is the probability that each
*eligible unit* is affected, so on a long text the affected fraction is close to the severity:

==================  ===============================================  ===========================================
name                unit (eligible when)                             what happens to a selected unit
==================  ===============================================  ===========================================
``char_swap``       word (two adjacent, different letters)           two adjacent different letters swap
``char_drop``       word (at least two letters)                      one letter is deleted
``char_insert``     word (at least one letter)                       a random letter is inserted next to a letter
``keyboard``        word (at least one letter)                       one letter becomes a QWERTY neighbour
``char_noise``      word (at least one letter)                       one of the four edits above, at random
``word_dropout``    word (holds a letter or a digit)                 the word is deleted (one word always stays)
``case_punct``      token (holds an upper-case letter or             lower-cased and stripped of punctuation (a
                    punctuation)                                     token left empty is deleted)
==================  ===============================================  ===========================================

Character edits keep the case of the letter they replace or sit next to. Determinism: the same
(text, name, severity, seed) always gives the same output (``random.Random`` seeded with a string, which
Python hashes with SHA-512, so it does not depend on ``PYTHONHASHSEED``). ``distort_texts`` derives one seed
per row from (seed, name, row index), so a split is distorted the same way whatever the batch it is in.

Note for uncased encoders (all-MiniLM-L6-v2, bert-base-uncased): the tokenizer lower-cases its input, so
the casing half of ``case_punct`` is invisible to the model; only the punctuation loss reaches it (the
detector still sees the casing in the raw text).
"""

from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

CLEAN = "clean"
CHAR_EDITS: tuple[str, ...] = ("char_swap", "char_drop", "char_insert", "keyboard")
DISTORTIONS: tuple[str, ...] = (*CHAR_EDITS, "char_noise", "word_dropout", "case_punct")
PUNCTUATION = frozenset(string.punctuation) | frozenset("“”‘’«»…–—")

_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    """Letters adjacent on a QWERTY keyboard (same row left/right, rows above and below, offset by half a key)."""
    pos = {ch: (r, c) for r, row in enumerate(_KEYBOARD_ROWS) for c, ch in enumerate(row)}
    out = {}
    for ch, (r, c) in pos.items():
        near = []
        for other, (r2, c2) in pos.items():
            if other == ch:
                continue
            # rows are shifted right by about half a key each: row r key c sits at x = c + r / 2
            if (r2 == r and abs(c2 - c) == 1) or (abs(r2 - r) == 1 and abs((c2 + r2 / 2) - (c + r / 2)) <= 1.0):
                near.append(other)
        out[ch] = "".join(sorted(near))
    return out


KEYBOARD_NEIGHBOURS: dict[str, str] = _keyboard_neighbours()


class DistortionError(ValueError):
    """An unknown distortion name or a severity outside [0, 1]."""


def check_distortion(name: str) -> str:
    if name not in DISTORTIONS:
        raise DistortionError(f"unknown distortion {name!r}; known: {', '.join(DISTORTIONS)}")
    return name


def check_severity(severity: float) -> float:
    ok = isinstance(severity, (int, float)) and not isinstance(severity, bool)
    if not ok or not math.isfinite(float(severity)) or not 0.0 <= float(severity) <= 1.0:
        raise DistortionError(f"severity must be a number in [0, 1] (the fraction of units affected), got {severity!r}")
    return float(severity)


@dataclass(frozen=True)
class DistortionStats:
    """What one call did: units that could be affected and units that were."""

    eligible: int
    affected: int

    @property
    def rate(self) -> float:
        return self.affected / self.eligible if self.eligible else 0.0


# ---- single-word edits ------------------------------------------------------------------------------------
def _letters(word: str) -> list[int]:
    return [i for i, ch in enumerate(word) if ch.isalpha()]


def _match_case(template: str, ch: str) -> str:
    return ch.upper() if template.isupper() else ch


def _swap_positions(word: str) -> list[int]:
    return [i for i in range(len(word) - 1) if word[i].isalpha() and word[i + 1].isalpha() and word[i] != word[i + 1]]


def _edit_swap(word: str, rng: random.Random) -> str:
    i = rng.choice(_swap_positions(word))
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _edit_drop(word: str, rng: random.Random) -> str:
    i = rng.choice(_letters(word))
    return word[:i] + word[i + 1 :]


def _edit_insert(word: str, rng: random.Random) -> str:
    i = rng.choice(_letters(word))
    new = _match_case(word[i], rng.choice(string.ascii_lowercase))
    at = i + rng.randint(0, 1)  # before or after the chosen letter
    return word[:at] + new + word[at:]


def _edit_keyboard(word: str, rng: random.Random) -> str:
    letters = [i for i in _letters(word) if word[i].lower() in KEYBOARD_NEIGHBOURS]
    i = rng.choice(letters)
    new = _match_case(word[i], rng.choice(KEYBOARD_NEIGHBOURS[word[i].lower()]))
    return word[:i] + new + word[i + 1 :]


def _can_swap(word: str) -> bool:
    return bool(_swap_positions(word))


def _can_drop(word: str) -> bool:
    return len(_letters(word)) >= 2


def _can_insert(word: str) -> bool:
    return bool(_letters(word))


def _can_keyboard(word: str) -> bool:
    return any(word[i].lower() in KEYBOARD_NEIGHBOURS for i in _letters(word))


_EDITS: dict[str, tuple[Callable[[str], bool], Callable[[str, random.Random], str]]] = {
    "char_swap": (_can_swap, _edit_swap),
    "char_drop": (_can_drop, _edit_drop),
    "char_insert": (_can_insert, _edit_insert),
    "keyboard": (_can_keyboard, _edit_keyboard),
}


def _edit_any(word: str, rng: random.Random) -> str:
    options = [name for name in CHAR_EDITS if _EDITS[name][0](word)]
    return _EDITS[rng.choice(options)][1](word, rng)


def _strip_case_punct(token: str) -> str:
    return "".join(ch for ch in token.lower() if ch not in PUNCTUATION)


def _has_case_or_punct(token: str) -> bool:
    return any(ch.isupper() or ch in PUNCTUATION for ch in token)


def _is_word(token: str) -> bool:
    return any(ch.isalnum() for ch in token)


# ---- whole texts ------------------------------------------------------------------------------------------
_SPLIT = re.compile(r"(\s+)")


def _tokens(text: str) -> tuple[str, list[str], list[str]]:
    """(leading whitespace, tokens, whitespace after each token)."""
    parts = _SPLIT.split(text)
    lead = ""
    if parts and parts[0] == "":
        parts = parts[1:]
        if parts:
            lead, parts = parts[0], parts[1:]
    tokens = parts[0::2]
    gaps = parts[1::2]
    gaps += [""] * (len(tokens) - len(gaps))
    if tokens and tokens[-1] == "":  # text ended in whitespace: the split leaves an empty last token
        tokens.pop()
        gaps.pop()
    return lead, tokens, gaps


def _join(lead: str, tokens: list[str | None], gaps: list[str]) -> str:
    """Rebuild the text; a deleted token (None) takes the whitespace before it with it (the first token: the
    whitespace after it), so the text keeps its leading and trailing whitespace."""
    out = [lead]
    first = True
    for k, token in enumerate(tokens):
        if token is None:
            continue
        if not first:
            out.append(gaps[k - 1])
        out.append(token)
        first = False
    if gaps:
        out.append(gaps[-1])
    return "".join(out)


def distort_with_stats(text: str, name: str, severity: float, rng: random.Random) -> tuple[str, DistortionStats]:
    """Distort one text with an explicit random generator; also say how many units were eligible / affected."""
    check_distortion(name)
    severity = check_severity(severity)
    if not isinstance(text, str):
        raise DistortionError(f"text must be a string, got {type(text).__name__}")
    lead, tokens, gaps = _tokens(text)
    out: list[str | None] = list(tokens)
    eligible = affected = 0
    if name in _EDITS or name == "char_noise":
        can, edit = _EDITS[name] if name in _EDITS else (_can_insert, _edit_any)
        for k, token in enumerate(tokens):
            if can(token):
                eligible += 1
                if rng.random() < severity:
                    out[k] = edit(token, rng)
                    affected += 1
    elif name == "word_dropout":
        words = [k for k, token in enumerate(tokens) if _is_word(token)]
        eligible = len(words)
        dropped = [k for k in words if rng.random() < severity]
        if dropped and len(dropped) == len(words):
            dropped.remove(rng.choice(dropped))  # keep one word: an empty text is no input at all
        for k in dropped:
            out[k] = None
        affected = len(dropped)
    else:  # case_punct
        for k, token in enumerate(tokens):
            if _has_case_or_punct(token):
                eligible += 1
                if rng.random() < severity:
                    stripped = _strip_case_punct(token)
                    out[k] = stripped if stripped else None
                    affected += 1
        if all(token is None for token in out) and tokens:
            return text, DistortionStats(eligible, 0)
    return _join(lead, out, gaps), DistortionStats(eligible, affected)


def row_rng(seed: int, name: str, index: int, field: int = 0) -> random.Random:
    """The generator of one text of a split: independent of batching and of the other rows."""
    return random.Random(f"dimee-distortion:{int(seed)}:{name}:{int(index)}:{int(field)}")


def distort(text: str, name: str, severity: float, seed: int = 0) -> str:
    """One distorted text; the same (text, name, severity, seed) always gives the same result."""
    return distort_with_stats(text, name, severity, row_rng(seed, name, 0))[0]


def distort_texts(
    texts: Sequence[str], name: str, severity: float | Sequence[float], seed: int = 0, field: int = 0
) -> list[str]:
    """Distort a list of texts; `severity` is one value or one per text. Row i uses `row_rng(seed, name, i,
    field)`, so the first and second texts of a pair task (field 0 / 1) get independent noise."""
    check_distortion(name)
    severities = [severity] * len(texts) if isinstance(severity, (int, float)) else list(severity)
    if len(severities) != len(texts):
        raise DistortionError(f"{len(texts)} texts but {len(severities)} severities")
    return [
        distort_with_stats(text, name, sev, row_rng(seed, name, i, field))[0]
        for i, (text, sev) in enumerate(zip(texts, severities))
    ]


def severity_schedule(n: int, low: float, high: float, seed: int = 0) -> list[float]:
    """n severities drawn uniformly from [low, high] (a training mix that covers several evaluated severities)."""
    low, high = check_severity(low), check_severity(high)
    if low > high:
        raise DistortionError(f"severity range must have low <= high, got {low} > {high}")
    rng = random.Random(f"dimee-severity:{int(seed)}")
    return [round(rng.uniform(low, high), 6) for _ in range(n)]
