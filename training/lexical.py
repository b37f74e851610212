"""Fitting the lexical model (model/lexical.py): TF-IDF and logistic regression, seconds on a
CPU. The same fit is the TF-IDF baseline every evaluation reports and the lexical half of the
shipped blend, so the blend is always compared with exactly the model it contains."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from radproto.model.errors import ModelError
from radproto.model.lexical import (
    CHAR_FEATURES,
    WORD_FEATURES,
    LexicalModel,
    lexical_text,
    rows_fingerprint,
)

_C = 10.0  # weak regularisation: the corpus is large and the n-grams are many
_SMALL = 1000


def fit_lexical(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> LexicalModel:
    """A lexical model trained on labelled order rows (labels are catalog names)."""
    from sklearn.linear_model import LogisticRegression

    index = {n: i for i, n in enumerate(names)}
    kept = [r for r in rows if r.get("label") in index]
    if not kept:
        raise ModelError("no training row has a label in the catalog")
    texts = [lexical_text(r) for r in kept]
    y = np.array([index[r["label"]] for r in kept])
    # On a few hundred orders (a small site history, a test) every n-gram counts.
    small = {"min_df": 1} if len(texts) < _SMALL else {}
    word_vocabulary, word_idf, word_features = tfidf_features(
        texts, {**WORD_FEATURES, **small})
    char_vocabulary, char_idf, char_features = tfidf_features(
        texts, {**CHAR_FEATURES, **small})
    from scipy.sparse import hstack

    features = hstack([word_features, char_features]).tocsr()
    if len(set(y.tolist())) < 2:
        raise ModelError("the lexical model needs orders of at least two protocols")
    regression = LogisticRegression(C=_C, max_iter=300).fit(features, y)
    # classes the training rows never name get no weights and a very low intercept
    coef = np.zeros((len(names), features.shape[1]), dtype=np.float32)
    intercept = np.full(len(names), -20.0, dtype=np.float32)
    classes = regression.classes_
    if len(classes) == 2:  # sklearn keeps one row: logits (0, w.x + b) give the same softmax
        coef[classes[0]], intercept[classes[0]] = 0.0, 0.0
        coef[classes[1]], intercept[classes[1]] = regression.coef_[0], regression.intercept_[0]
    else:
        coef[classes], intercept[classes] = regression.coef_, regression.intercept_
    return LexicalModel(
        names=tuple(names),
        word_vocabulary=word_vocabulary, word_idf=word_idf.astype(np.float32),
        char_vocabulary=char_vocabulary, char_idf=char_idf.astype(np.float32),
        coef=coef, intercept=intercept, fitted_on=rows_fingerprint(kept))


_TFIDF_SETTINGS = ("norm", "use_idf", "smooth_idf", "sublinear_tf")


def tfidf_features(texts: Sequence[str], settings: Mapping[str, Any]
                   ) -> tuple[dict[str, int], np.ndarray, Any]:
    """(vocabulary, idf, TF-IDF matrix of `texts`) as `TfidfVectorizer(**settings)` fits them,
    except that of n-grams tied in count at the `max_features` cut the alphabetically first
    are kept. sklearn cuts with an unstable argsort, and NumPy sorts with other kernels on an
    AVX-512 CPU than on an AVX2 one: the same rows gave ~1,700 different word features (and a
    dev top-1 0.8 points apart) on the two machine kinds."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

    counting = {k: v for k, v in settings.items()
                if k not in _TFIDF_SETTINGS and k != "max_features"}
    counter = CountVectorizer(**counting)
    counts = counter.fit_transform(texts)  # columns in alphabetical order of the n-grams
    terms = counter.get_feature_names_out()
    limit = settings.get("max_features")
    if limit is not None and counts.shape[1] > limit:
        totals = np.asarray(counts.sum(axis=0)).ravel()
        keep = np.sort(np.argsort(-totals, kind="stable")[:limit])
        counts, terms = counts[:, keep], terms[keep]
    weighting = TfidfTransformer(**{k: v for k, v in settings.items() if k in _TFIDF_SETTINGS})
    features = weighting.fit_transform(counts)
    return {str(t): i for i, t in enumerate(terms)}, weighting.idf_, features
