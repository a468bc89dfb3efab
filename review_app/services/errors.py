"""Errors of the domain services that are not about the input itself (those are 4xx of their own modules)."""

from __future__ import annotations


class Conflict(RuntimeError):
    """The request is valid but the project is not in a state to do it (no model yet, imagery not ready)."""


class QuotaExceeded(RuntimeError):
    """A per-user quota (PEARL_QUOTA_*) would be exceeded (403); the message names the quota and its setting."""
