"""The provider boundary: what a provider package under ``handlers/`` implements
(:mod:`receiver.providers.contract`) and how the core finds the installed ones
(:mod:`receiver.providers.registry`). A provider imports what it implements from here."""

from __future__ import annotations

from receiver.providers.contract import (
    Accepted,
    Ack,
    DocumentMissing,
    DocumentNotReady,
    DocumentRef,
    DocumentSource,
    HookSpec,
    MediaTypes,
    Operation,
    Provider,
    ProviderPackage,
    ProviderSettings,
    Reading,
    ReconcileRead,
    ReturnFacts,
    SecretHeader,
    StoredCallback,
    http_base_url,
)

__all__ = [
    "Accepted",
    "Ack",
    "DocumentMissing",
    "DocumentNotReady",
    "DocumentRef",
    "DocumentSource",
    "HookSpec",
    "MediaTypes",
    "Operation",
    "Provider",
    "ProviderPackage",
    "ProviderSettings",
    "Reading",
    "ReconcileRead",
    "ReturnFacts",
    "SecretHeader",
    "StoredCallback",
    "http_base_url",
]
