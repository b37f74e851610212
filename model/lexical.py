"""The lexical half of the blend: TF-IDF n-grams and a multinomial logistic regression.

On orders written by other people a bag of words (word 1-2-grams plus character 3-5-grams
inside words) is strong and its errors differ from the language model's, so the classifier
adds its log-probabilities to the protocol head's: log p = log_softmax((llm + w * lexical) / T)
(docs/benchmarks.md, section dev-set, has the ablation). This module only scores; fitting is
training/lexical.py. Stored beside the adapter as plain arrays (lexical.safetensors) and
vocabularies (lexical.json), never as a pickle: a model directory from a registry must not
be able to run code when it is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radproto.model.errors import ModelError

LEXICAL_WEIGHTS = "lexical.safetensors"
LEXICAL_VOCABULARY = "lexical.json"
LEXICAL_FIELDS = ("ordered_exam", "history", "diagnosis", "notes")

# The two vectorizers' settings: training/lexical.py fits with these, scoring rebuilds them.
WORD_FEATURES: dict[str, Any] = {"ngram_range": (1, 2), "min_df": 2, "sublinear_tf": True,
                                 "max_features": 20_000}
CHAR_FEATURES: dict[str, Any] = {"analyzer": "char_wb", "ngram_range": (3, 5), "min_df": 3,
                                 "sublinear_tf": True, "max_features": 30_000}


def lexical_text(fields: Mapping[str, Any]) -> str:
    """The text the bag of words reads: the four order fields joined."""
    return " | ".join(str(fields.get(k) or "") for k in LEXICAL_FIELDS)


def rows_fingerprint(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """{"rows": n, "sha256": ...} of labelled order rows as the lexical model reads them
    (text and label, in order): the same rows give the same fingerprint."""
    import hashlib

    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{lexical_text(row)}\t{row.get('label', '')}\n".encode())
    return {"rows": len(rows), "sha256": digest.hexdigest()}


@dataclass(frozen=True)
class LexicalModel:
    """TF-IDF features and one logistic-regression row per protocol, keyed by name."""

    names: tuple[str, ...]
    word_vocabulary: dict[str, int]
    word_idf: np.ndarray  # [n_words]
    char_vocabulary: dict[str, int]
    char_idf: np.ndarray  # [n_chars]
    coef: np.ndarray  # [n_protocols, n_words + n_chars]
    intercept: np.ndarray  # [n_protocols]
    # what it was fitted on: {"rows": n, "sha256": hex of the (text, label) rows in order},
    # so that a model card's recipe can be checked against the stored fit ({} if unknown)
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        width = len(self.word_vocabulary) + len(self.char_vocabulary)
        if self.coef.shape != (len(self.names), width) or \
                self.intercept.shape != (len(self.names),):
            raise ModelError(f"lexical model: coefficients {self.coef.shape} do not fit "
                             f"{len(self.names)} protocols and {width} features")

    def log_probs(self, fields_list: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """[n, n_protocols] float64 log-probabilities in `names` order."""
        from scipy.special import log_softmax

        if not fields_list:
            return np.zeros((0, len(self.names)))
        texts = [lexical_text(f) for f in fields_list]
        words, chars, word_coef, char_coef = self._scorer()
        logits = (words.transform(texts) @ word_coef + chars.transform(texts) @ char_coef
                  + self.intercept)
        return log_softmax(np.asarray(logits, dtype=np.float64), axis=1)

    def _scorer(self) -> tuple[Any, Any, np.ndarray, np.ndarray]:
        """The two vectorizers and the coefficients as contiguous float32 [features,
        protocols] blocks, built once: converting and slicing the stored float16 matrix on
        every call cost ~10 ms, most of a lone order's lexical time."""
        cached = self.__dict__.get("_cached_scorer")
        if cached is None:
            from sklearn.feature_extraction.text import TfidfVectorizer

            words = TfidfVectorizer(**_scoring_settings(WORD_FEATURES),
                                    vocabulary=self.word_vocabulary)
            words.idf_ = self.word_idf
            chars = TfidfVectorizer(**_scoring_settings(CHAR_FEATURES),
                                    vocabulary=self.char_vocabulary)
            chars.idf_ = self.char_idf
            n_words = len(self.word_vocabulary)
            coef = self.coef.astype(np.float32)
            cached = (words, chars, np.ascontiguousarray(coef[:, :n_words].T),
                      np.ascontiguousarray(coef[:, n_words:].T))
            object.__setattr__(self, "_cached_scorer", cached)  # frozen: cache only
        return cached

    def for_catalog(self, names: Sequence[str]) -> LexicalModel:
        """Rows re-keyed by name to a serving catalog. A protocol the model never saw gets
        no word weights and the median intercept: the bag of words stays neutral about it
        and the protocol head (started from its name) decides."""
        if tuple(names) == self.names:
            return self
        index = {n: i for i, n in enumerate(self.names)}
        neutral = float(np.median(self.intercept))
        coef = np.zeros((len(names), self.coef.shape[1]), dtype=self.coef.dtype)
        intercept = np.full(len(names), neutral, dtype=self.intercept.dtype)
        for row, name in enumerate(names):
            if name in index:
                coef[row] = self.coef[index[name]]
                intercept[row] = self.intercept[index[name]]
        return LexicalModel(tuple(names), self.word_vocabulary, self.word_idf,
                            self.char_vocabulary, self.char_idf, coef, intercept,
                            self.fitted_on)

    def save(self, directory: Path) -> None:
        from safetensors.numpy import save_file

        save_file({"word_idf": self.word_idf.astype(np.float32),
                   "char_idf": self.char_idf.astype(np.float32),
                   # float16 halves the file (5.8 MB for the default corpus); top-1 unchanged
                   "coef": self.coef.astype(np.float16),
                   "intercept": self.intercept.astype(np.float32)},
                  str(directory / LEXICAL_WEIGHTS))
        (directory / LEXICAL_VOCABULARY).write_text(json.dumps(
            {"names": list(self.names), "words": self.word_vocabulary,
             "chars": self.char_vocabulary, "fitted_on": self.fitted_on},
            ensure_ascii=False), "utf-8")


def load_lexical(directory: Path) -> LexicalModel | None:
    """The lexical model stored in a model directory, or None when it has none."""
    weights, vocabulary = directory / LEXICAL_WEIGHTS, directory / LEXICAL_VOCABULARY
    if not weights.is_file():
        return None
    from safetensors.numpy import load_file

    try:
        arrays = load_file(str(weights))
        words = json.loads(vocabulary.read_text("utf-8"))
        return LexicalModel(tuple(words["names"]), words["words"], arrays["word_idf"],
                            words["chars"], arrays["char_idf"], arrays["coef"],
                            arrays["intercept"], words.get("fitted_on") or {})
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{directory}: cannot read the lexical model: {exc}") from exc


def _scoring_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The vectorizer settings that shape features (min_df/max_features only select them)."""
    return {k: v for k, v in settings.items() if k not in ("min_df", "max_features")}
