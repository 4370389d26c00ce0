"""A light distortion detector for the mobile tier (DESIGN.md section 7, issue 6).

It names the distortion type of an input text ("clean" or one of the expert types) so that the mobile and
edge tiers can switch to the matching expert exits. A scikit-learn estimator: standardised features into a
multinomial logistic regression.

Features (all cheap, pure Python on the raw text; ``text_feature_names()`` lists them):

* shape: number of words, mean and spread of word length, single-letter tokens;
* casing and punctuation: upper-case letters, capitalised words, a capital first letter, punctuation per
  token, a sentence-final mark;
* spelling, from a lexicon and character-trigram statistics learned in ``fit`` from the texts labelled clean:
  the share of words in the lexicon, and of the others the share that one edit turns into a lexicon word
  (a letter deleted, a letter inserted, two adjacent letters swapped, a letter substituted), the mean
  trigram log-probability and the share of unseen trigrams;
* word order: the share of adjacent word pairs seen in the clean texts (word dropout makes new pairs).

Optionally a hidden-state vector per sample (``hidden``: the embedding-layer feature that mobile computes
before any layer runs, or a mobile layer's pooled state) is appended to the text features.

Pair tasks: pass the second texts as ``text_pairs``; features are computed on the two texts joined by a space.
Serialisation is JSON only (``to_dict`` / ``from_dict``), no pickle.
"""

from __future__ import annotations

import base64
import math
import re
import string
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from .errors import PolicyError

CLEAN = "clean"
DETECTOR_FORMAT_VERSION = 1
TRIGRAM_BUCKETS = 1 << 15
BIGRAM_BUCKETS = 1 << 18
_PUNCT = frozenset(string.punctuation) | frozenset("“”‘’«»…–—")
_WORD = re.compile(r"[^\W\d_]+")

_SHAPE = ("log_words", "mean_word_len", "std_word_len", "single_letter_tokens")
_CASE = ("upper_letters", "capitalised_words", "capital_first", "punct_per_token", "final_mark")
_SPELL = (
    "in_lexicon",
    "oov_fixed_by_delete",
    "oov_fixed_by_insert",
    "oov_fixed_by_swap",
    "oov_fixed_by_substitute",
    "trigram_logprob",
    "unseen_trigrams",
)
_ORDER = ("seen_word_pairs",)
TEXT_FEATURES: tuple[str, ...] = (*_SHAPE, *_CASE, *_SPELL, *_ORDER)


class DetectorError(PolicyError):
    """A detector used before fit, with mismatched inputs, or loaded from a damaged file."""


def text_feature_names() -> list[str]:
    return list(TEXT_FEATURES)


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _trigrams(word: str) -> list[str]:
    padded = f"^{word}$"
    return [padded[i : i + 3] for i in range(len(padded) - 2)]


class _Lexicon:
    """Words seen in clean text with the one-edit indexes used to explain out-of-lexicon words."""

    def __init__(self, words: Sequence[str]):
        self.words = frozenset(words)
        self.deletions = frozenset(w[:i] + w[i + 1 :] for w in self.words for i in range(len(w)) if len(w) > 1)
        self.wildcards = frozenset(w[:i] + "*" + w[i + 1 :] for w in self.words for i in range(len(w)))

    def fixes(self, w: str) -> tuple[bool, bool, bool, bool]:
        """Does one edit turn `w` into a lexicon word: (delete a letter, insert one, swap two, substitute one)."""
        by_delete = any(w[:i] + w[i + 1 :] in self.words for i in range(len(w))) if len(w) > 1 else False
        by_insert = w in self.deletions
        by_swap = any(w[:i] + w[i + 1] + w[i] + w[i + 2 :] in self.words for i in range(len(w) - 1))
        by_substitute = any(w[:i] + "*" + w[i + 1 :] in self.wildcards for i in range(len(w)))
        return by_delete, by_insert, by_swap, by_substitute


def _join_pairs(texts: Sequence[str], text_pairs: Sequence[str] | None) -> list[str]:
    if text_pairs is None:
        return [str(t) for t in texts]
    if len(text_pairs) != len(texts):
        raise DetectorError(f"{len(texts)} texts but {len(text_pairs)} second texts")
    return [f"{a} {b}" for a, b in zip(texts, text_pairs)]


class TextStatistics:
    """What the spelling and word-order features compare against, learned from clean texts."""

    def __init__(self, lexicon: Sequence[str], trigram_logprob: np.ndarray, bigram_bits: np.ndarray):
        self.lexicon = _Lexicon(lexicon)
        self.trigram_logprob = np.asarray(trigram_logprob, dtype=np.float32)
        self.bigram_bits = np.asarray(bigram_bits, dtype=np.uint8)
        self._unseen = float(self.trigram_logprob.min()) if self.trigram_logprob.size else 0.0

    @classmethod
    def fit(cls, clean_texts: Sequence[str], min_count: int = 1) -> "TextStatistics":
        counts: Counter[str] = Counter()
        tri = np.zeros(TRIGRAM_BUCKETS, dtype=np.float64)
        bits = np.zeros(BIGRAM_BUCKETS // 8, dtype=np.uint8)
        for text in clean_texts:
            words = _words(text)
            counts.update(words)
            for w in words:
                for g in _trigrams(w):
                    tri[_crc(g) % TRIGRAM_BUCKETS] += 1
            for a, b in zip(words, words[1:]):
                h = _crc(f"{a} {b}") % BIGRAM_BUCKETS
                bits[h >> 3] |= 1 << (h & 7)
        lexicon = sorted(w for w, c in counts.items() if c >= min_count)
        logprob = np.log((tri + 1.0) / (tri.sum() + TRIGRAM_BUCKETS))
        return cls(lexicon, logprob, bits)

    @classmethod
    def from_words(cls, words: Sequence[str]) -> "TextStatistics":
        """Statistics of a word list (each word counted once); no word pairs."""
        lexicon = sorted({w.lower() for w in words if _WORD.fullmatch(w)})
        if not lexicon:
            raise DetectorError("the lexicon holds no alphabetic words")
        tri = np.zeros(TRIGRAM_BUCKETS, dtype=np.float64)
        for w in lexicon:
            for g in _trigrams(w):
                tri[_crc(g) % TRIGRAM_BUCKETS] += 1
        logprob = np.log((tri + 1.0) / (tri.sum() + TRIGRAM_BUCKETS))
        return cls(lexicon, logprob, np.zeros(BIGRAM_BUCKETS // 8, dtype=np.uint8))

    def seen_pair(self, a: str, b: str) -> bool:
        h = _crc(f"{a} {b}") % BIGRAM_BUCKETS
        return bool(self.bigram_bits[h >> 3] & (1 << (h & 7)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "lexicon": sorted(self.lexicon.words),
            "trigram_logprob": [round(float(v), 5) for v in self.trigram_logprob],
            "bigram_bits": base64.b64encode(self.bigram_bits.tobytes()).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TextStatistics":
        bits = np.frombuffer(base64.b64decode(data["bigram_bits"]), dtype=np.uint8)
        return cls(data["lexicon"], np.asarray(data["trigram_logprob"], dtype=np.float32), bits)


def text_features(texts: Sequence[str], stats: TextStatistics, text_pairs: Sequence[str] | None = None) -> np.ndarray:
    """The text features [n, len(TEXT_FEATURES)] of raw texts (see the module doc)."""
    joined = _join_pairs(texts, text_pairs)
    out = np.zeros((len(joined), len(TEXT_FEATURES)), dtype=np.float64)
    lex = stats.lexicon
    for row, text in enumerate(joined):
        tokens = text.split()
        words = _words(text)
        lengths = np.array([len(w) for w in words], dtype=float) if words else np.zeros(1)
        letters = [ch for ch in text if ch.isalpha()]
        raw_words = _WORD.findall(text)
        stripped = text.rstrip()
        oov = [w for w in words if w not in lex.words]
        fixes = np.array([lex.fixes(w) for w in oov], dtype=float) if oov else np.zeros((1, 4))
        grams = [g for w in words for g in _trigrams(w)]
        logp = (
            stats.trigram_logprob[[_crc(g) % TRIGRAM_BUCKETS for g in grams]] if grams else np.zeros(1, np.float32)
        )
        pairs = list(zip(words, words[1:]))
        out[row] = (
            math.log1p(len(words)),
            lengths.mean(),
            lengths.std(),
            sum(1 for t in tokens if len(t) == 1 and t.isalpha() and t.lower() not in ("a", "i")) / max(1, len(tokens)),
            sum(ch.isupper() for ch in letters) / max(1, len(letters)),
            sum(w[:1].isupper() for w in raw_words) / max(1, len(raw_words)),
            float(bool(stripped[:1]) and stripped[:1].isupper()),
            sum(ch in _PUNCT for ch in text) / max(1, len(tokens)),
            float(stripped[-1:] in (".", "!", "?")),
            1.0 - len(oov) / max(1, len(words)),
            *(fixes.sum(axis=0) / max(1, len(words))),
            float(logp.mean()),
            float((logp <= stats._unseen + 1e-6).mean()),
            sum(stats.seen_pair(a, b) for a, b in pairs) / max(1, len(pairs)),
        )
    return out


class DistortionDetector(ClassifierMixin, BaseEstimator):
    """Names an input's distortion type (or "clean") from text features and an optional hidden-state vector.

    ``fit(texts, y, hidden=None, text_pairs=None)``: y are type names; the texts labelled ``clean_label`` teach
    the lexicon and trigram statistics (all texts, if none is labelled clean). ``predict`` /
    ``predict_proba`` take the same inputs. Fitted: ``classes_``, ``stats_``, ``scaler_``, ``model_``,
    ``n_hidden_`` (0 when no hidden vector is used).
    """

    def __init__(
        self,
        use_text: bool = True,
        C: float = 1.0,
        max_iter: int = 2000,
        lexicon_min_count: int = 1,
        clean_label: str = CLEAN,
        n_folds: int = 5,
    ):
        self.n_folds = n_folds
        self.use_text = use_text
        self.C = C
        self.max_iter = max_iter
        self.lexicon_min_count = lexicon_min_count
        self.clean_label = clean_label

    # ---- features ------------------------------------------------------------------------------------
    def _features(self, texts, hidden, text_pairs, fitting: bool = False) -> np.ndarray:
        n = len(texts)
        blocks = []
        if self.use_text:
            blocks.append(text_features(texts, self.stats_, text_pairs))
        if hidden is not None:
            h = np.asarray(hidden, dtype=np.float64)
            if h.ndim != 2 or h.shape[0] != n:
                raise DetectorError(f"hidden must have shape ({n}, dim), got {h.shape}")
            if not fitting and h.shape[1] != self.n_hidden_:
                raise DetectorError(f"hidden has {h.shape[1]} columns but the detector was fitted on {self.n_hidden_}")
            blocks.append(h)
        elif not fitting and getattr(self, "n_hidden_", 0):
            raise DetectorError(f"this detector was fitted with a hidden vector of size {self.n_hidden_}; pass hidden=")
        if not blocks:
            raise DetectorError("no features: use_text=False needs a hidden vector")
        return np.concatenate(blocks, axis=1)

    def fit(
        self,
        texts: Sequence[str],
        y: Sequence[str],
        hidden=None,
        text_pairs=None,
        groups: Sequence[Any] | None = None,
        reference_texts: Sequence[str] | None = None,
        lexicon: Sequence[str] | None = None,
    ) -> "DistortionDetector":
        """Fit on texts labelled with their distortion type.

        The spelling statistics are learned from the clean texts (plus `reference_texts`, clean text used for
        nothing else). Scored on the very texts they were learned from, clean text would look cleaner than
        any new text does, so with `groups` (e.g. the source row of each text and of its distorted copies)
        the features the classifier is fitted on are cross-fitted: statistics from the other groups'
        clean texts (and the reference texts), in `n_folds` folds. Prediction uses statistics from all of them.

        `lexicon` (e.g. the whole words of the encoder's tokenizer vocabulary, which mobile holds anyway)
        replaces all that: the lexicon and the trigram statistics come from that word list alone, no text
        is needed for them and nothing leaks; the word-pair feature is then 0.
        """
        texts = list(texts)
        labels = np.asarray([str(v) for v in y])
        if len(texts) != len(labels):
            raise DetectorError(f"{len(texts)} texts but {len(labels)} labels")
        if len(set(labels.tolist())) < 2:
            raise DetectorError("the detector needs examples of at least two classes (e.g. clean and one distortion)")
        if not np.isfinite(self.C) or self.C <= 0:
            raise DetectorError(f"C must be > 0, got {self.C}")
        joined = _join_pairs(texts, text_pairs)
        reference = [str(t) for t in (reference_texts or [])]
        is_clean = labels == self.clean_label
        clean = [t for t, c in zip(joined, is_clean) if c] or joined
        self.n_hidden_ = 0 if hidden is None else int(np.asarray(hidden).shape[1])
        if lexicon is not None:
            self.stats_ = TextStatistics.from_words(lexicon)
            x = self._features(texts, hidden, text_pairs, fitting=True)
        elif groups is None or not self.use_text:
            self.stats_ = TextStatistics.fit(clean + reference, self.lexicon_min_count)
            x = self._features(texts, hidden, text_pairs, fitting=True)
        else:
            x = self._cross_fitted_features(texts, joined, is_clean, hidden, text_pairs, groups, reference)
            self.stats_ = TextStatistics.fit(clean + reference, self.lexicon_min_count)
        self.scaler_ = StandardScaler().fit(x)
        self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(self.scaler_.transform(x), labels)
        self.classes_ = self.model_.classes_
        return self

    def _cross_fitted_features(self, texts, joined, is_clean, hidden, text_pairs, groups, reference) -> np.ndarray:
        group_ids = np.asarray([str(g) for g in groups])
        if group_ids.shape[0] != len(texts):
            raise DetectorError(f"{len(texts)} texts but {group_ids.shape[0]} groups")
        unique = np.unique(group_ids)
        folds = max(2, min(int(self.n_folds), unique.shape[0]))
        fold_of_group = dict(zip(unique, np.random.default_rng(0).permutation(unique.shape[0]) % folds))
        fold = np.array([fold_of_group[g] for g in group_ids])
        x = None
        for k in range(folds):
            rows = np.flatnonzero(fold == k)
            others = [joined[i] for i in np.flatnonzero((fold != k) & is_clean)]
            self.stats_ = TextStatistics.fit(others + reference, self.lexicon_min_count)
            part = self._features(
                [texts[i] for i in rows],
                None if hidden is None else np.asarray(hidden)[rows],
                None if text_pairs is None else [text_pairs[i] for i in rows],
                fitting=True,
            )
            if x is None:
                x = np.zeros((len(texts), part.shape[1]))
            x[rows] = part
        return x

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise DetectorError("the detector is not fitted; call fit first (or load one with from_dict)")

    def predict_proba(self, texts: Sequence[str], hidden=None, text_pairs=None) -> np.ndarray:
        self._check_fitted()
        return self.model_.predict_proba(self.scaler_.transform(self._features(list(texts), hidden, text_pairs)))

    def predict(self, texts: Sequence[str], hidden=None, text_pairs=None) -> np.ndarray:
        proba = self.predict_proba(texts, hidden, text_pairs)
        return self.classes_[proba.argmax(axis=1)]

    def score(self, texts, y, hidden=None, text_pairs=None) -> float:
        return float(np.mean(self.predict(texts, hidden, text_pairs) == np.asarray([str(v) for v in y])))

    # ---- JSON persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "format_version": DETECTOR_FORMAT_VERSION,
            "params": self.get_params(),
            "classes": [str(c) for c in self.classes_],
            "n_hidden": int(self.n_hidden_),
            "scaler": {"mean": self.scaler_.mean_.tolist(), "scale": self.scaler_.scale_.tolist()},
            "coef": self.model_.coef_.tolist(),
            "intercept": self.model_.intercept_.tolist(),
            "stats": self.stats_.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DistortionDetector":
        try:
            detector = cls(**data["params"])
            detector.stats_ = TextStatistics.from_dict(data["stats"])
            detector.n_hidden_ = int(data["n_hidden"])
            scaler = StandardScaler()
            scaler.mean_ = np.asarray(data["scaler"]["mean"], dtype=np.float64)
            scaler.scale_ = np.asarray(data["scaler"]["scale"], dtype=np.float64)
            scaler.var_ = scaler.scale_**2
            scaler.n_features_in_ = scaler.mean_.shape[0]
            model = LogisticRegression(C=detector.C, max_iter=detector.max_iter)
            model.classes_ = np.asarray(data["classes"])
            model.coef_ = np.asarray(data["coef"], dtype=np.float64)
            model.intercept_ = np.asarray(data["intercept"], dtype=np.float64)
            model.n_features_in_ = model.coef_.shape[1]
            detector.scaler_, detector.model_, detector.classes_ = scaler, model, model.classes_
        except (KeyError, TypeError, ValueError) as err:
            raise DetectorError(f"not a saved distortion detector ({err})") from err
        return detector
