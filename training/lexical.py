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
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    index = {n: i for i, n in enumerate(names)}
    kept = [r for r in rows if r.get("label") in index]
    if not kept:
        raise ModelError("no training row has a label in the catalog")
    texts = [lexical_text(r) for r in kept]
    y = np.array([index[r["label"]] for r in kept])
    # On a few hundred orders (a small site history, a test) every n-gram counts.
    small = {"min_df": 1} if len(texts) < _SMALL else {}
    words = TfidfVectorizer(**{**WORD_FEATURES, **small}).fit(texts)
    chars = TfidfVectorizer(**{**CHAR_FEATURES, **small}).fit(texts)
    from scipy.sparse import hstack

    features = hstack([words.transform(texts), chars.transform(texts)]).tocsr()
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
        word_vocabulary={k: int(v) for k, v in words.vocabulary_.items()},
        word_idf=words.idf_.astype(np.float32),
        char_vocabulary={k: int(v) for k, v in chars.vocabulary_.items()},
        char_idf=chars.idf_.astype(np.float32),
        coef=coef, intercept=intercept, fitted_on=rows_fingerprint(kept))
