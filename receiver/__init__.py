"""signback's core. For rule authors, this package is the stable surface::

    from receiver import Action, EventKind, NormalizedEvent, RequestState, SignatureRequest, rule

Everything else under ``receiver`` is internal and may move between releases. Importing this
package loads only these plain values (no app, no database, no provider).
"""

from __future__ import annotations

from receiver.events import EventKind, NormalizedEvent
from receiver.model import Action, RequestState, SignatureRequest
from receiver.pipeline.rules import rule

__all__ = ["Action", "EventKind", "NormalizedEvent", "RequestState", "SignatureRequest", "rule"]
