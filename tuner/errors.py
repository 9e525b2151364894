"""Errors with advice for the user, raised at any layer and shown by every face.

Kept apart from the modules that raise them so that light processes (the CLI's HTTP
commands, the dashboard's renderer) can catch them without importing torch.
"""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(ValueError):
    """A request that cannot be followed (no such study, no such device, a storage that
    does not open), with advice."""
