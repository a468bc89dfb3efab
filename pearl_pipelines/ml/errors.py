"""Errors a mapper can act on: each message says what was wrong with the input and what is accepted."""

from __future__ import annotations


class RetrainError(ValueError):
    """Labels, classes or options that a retrain cannot use."""


class SuggestionError(ValueError):
    """Options that `ml.suggest.suggest_clicks` cannot use (how many points, which uncertainty, spacing)."""
