"""Errors a member caused and can fix: they carry the one sentence to show, and nothing is charged."""

from __future__ import annotations


class UserError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
