"""Corpus, import, fine-tuning, evaluation and batch prediction."""
