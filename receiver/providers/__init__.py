"""The provider boundary: what a provider package under ``handlers/`` implements
(:mod:`receiver.providers.contract`) and how the core finds the installed ones
(:mod:`receiver.providers.registry`)."""

from __future__ import annotations

from receiver.providers.contract import (
    FollowUpEvent,
    Operation,
    Outcome,
    Provider,
    StoredCallback,
)

__all__ = ["FollowUpEvent", "Operation", "Outcome", "Provider", "StoredCallback"]
