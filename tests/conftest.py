"""Shared fixtures of the test suite."""

from helpers_text import tiny_tokenizer  # noqa: F401  (a fixture: a small SentencePiece model)
