"""The commands the tool prints for a user to copy: ``sweep_command`` lives in
``workers.results.commands`` (every layer prints one); the sweep package imports it from here."""

from __future__ import annotations

from workers.results.commands import sweep_command

__all__ = ["sweep_command"]
