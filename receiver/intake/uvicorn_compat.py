"""Does the installed uvicorn still have what signback's HTTP protocols rely on?

receiver/intake/guarded_protocol.py and receiver/intake/protocol.py subclass uvicorn's
``HttpToolsProtocol`` and use parts of it that are not public: attributes of the protocol,
of its flow control and of its request cycles, and the names of the callbacks httptools
calls. pyproject.toml bounds uvicorn to the versions tested and the lock file pins one, but
an install made another way could bring a uvicorn that moved something. So `signback serve`
checks at start, by looking at the installed classes (and, for what uvicorn's protocol
does to the cycle in its slot, at their source), and serves with:

- ``HookHttpProtocol`` when everything is there (the usual case);
- ``GuardedHttpProtocol`` (connection limits, no short path for callbacks) when only the
  short path's needs are missing;
- uvicorn's own ``httptools`` protocol otherwise.

Every choice gives the same answers: the short path only saves time, and uvicorn's ASGI
path reaches the same ``HookRouter``. What is lost is said in one warning at start.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from dataclasses import dataclass
from typing import Any, Literal

# What the connection guard (receiver/intake/guarded_protocol.py) uses of uvicorn.
GUARD_PROTOCOL_ATTRIBUTES = (
    "app",
    "client",
    "cycle",
    "flow",
    "parser",
    "pipeline",
    "scope",
    "server_state",
    "timeout_keep_alive_task",
    "transport",
)
GUARD_PROTOCOL_METHODS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "on_headers_complete",  # wraps a new cycle's transport (the gentle end)
    "on_response_complete",  # parses held bytes as answers make room (the pipelining bound)
)
GUARD_FLOW_ATTRIBUTES = ("read_paused", "pause_reading", "resume_reading")
# What it reads of uvicorn's own RequestResponseCycle.
GUARD_CYCLE_ATTRIBUTES = (
    "disconnected",
    "message_event",
    "more_body",
    "response_complete",
    "scope",
    "transport",
)

# What the short path (receiver/intake/protocol.py) uses besides.
SHORT_PROTOCOL_ATTRIBUTES = (
    "config",
    "expect_100_continue",
    "headers",
    "limit_concurrency",
    "loop",
    "parser",
    "root_path",
    "tasks",
    "url",
)
SHORT_PROTOCOL_METHODS = ("on_headers_complete", "on_response_complete")
SHORT_FLOW_ATTRIBUTES = ("drain", "pause_reading", "write_paused")
SHORT_MODULE_NAMES = ("STATUS_LINE",)
SHORT_SERVER_STATE_ATTRIBUTES = ("default_headers",)

_CYCLE_USE = re.compile(r"\bcycle\.(\w+)")
_ASSIGNED = re.compile(r"\bself\.(\w+)\s*(?::[^=\n]+)?=(?!=)")


@dataclass(frozen=True)
class Compatibility:
    guard_missing: tuple[str, ...]
    short_path_missing: tuple[str, ...]

    @property
    def protocol(self) -> type[asyncio.Protocol] | Literal["httptools"]:
        """The protocol to serve with (see the module docstring)."""
        if self.guard_missing:
            return "httptools"
        if self.short_path_missing:
            from receiver.intake.guarded_protocol import GuardedHttpProtocol

            return GuardedHttpProtocol
        from receiver.intake.protocol import HookHttpProtocol

        return HookHttpProtocol

    @property
    def warning(self) -> str | None:
        """The one line to log at start when something is missing, else None."""
        import uvicorn

        version = getattr(uvicorn, "__version__", "?")
        if self.guard_missing:
            return (
                f"uvicorn {version} lacks {', '.join(self.guard_missing)}, which signback's "
                "HTTP protocol relies on: serving with uvicorn's own protocol. Answers are the "
                "same, but callbacks are slower and connections are not guarded (no header "
                "or body timeouts, no connection cap). Install the locked uvicorn "
                "(python3 scripts/run.py does)."
            )
        if self.short_path_missing:
            return (
                f"uvicorn {version} lacks {', '.join(self.short_path_missing)}, which "
                "signback's short path for callbacks relies on: callbacks take uvicorn's "
                "ASGI path, with the same answers, only slower. Install the locked uvicorn "
                "(python3 scripts/run.py does)."
            )
        return None


def check() -> Compatibility:
    """Look at the installed uvicorn for what the protocols use."""
    try:
        from uvicorn.protocols.http import flow_control, httptools_impl
    except ImportError as exc:  # httptools missing, or the module moved
        return Compatibility((f"uvicorn.protocols.http.httptools_impl ({exc})",), ())
    protocol_class = getattr(httptools_impl, "HttpToolsProtocol", None)
    cycle_class = getattr(httptools_impl, "RequestResponseCycle", None)
    flow_class = getattr(flow_control, "FlowControl", None)
    if protocol_class is None or cycle_class is None or flow_class is None:
        return Compatibility(("HttpToolsProtocol, RequestResponseCycle or FlowControl",), ())

    protocol_attributes = _instance_attributes(protocol_class)
    flow_attributes = _instance_attributes(flow_class) | set(dir(flow_class))
    cycle_attributes = _instance_attributes(cycle_class)

    def missing(
        attributes: tuple[str, ...], methods: tuple[str, ...], flow: tuple[str, ...]
    ) -> list[str]:
        found = [f"HttpToolsProtocol.{a}" for a in attributes if a not in protocol_attributes]
        found += [f"HttpToolsProtocol.{m}()" for m in methods if not _defines(protocol_class, m)]
        found += [f"FlowControl.{a}" for a in flow if a not in flow_attributes]
        return found

    guard = missing(GUARD_PROTOCOL_ATTRIBUTES, GUARD_PROTOCOL_METHODS, GUARD_FLOW_ATTRIBUTES)
    guard += [
        f"RequestResponseCycle.{a}" for a in GUARD_CYCLE_ATTRIBUTES if a not in cycle_attributes
    ]
    short = missing(SHORT_PROTOCOL_ATTRIBUTES, SHORT_PROTOCOL_METHODS, SHORT_FLOW_ATTRIBUTES)
    short += [f"httptools_impl.{n}" for n in SHORT_MODULE_NAMES if not hasattr(httptools_impl, n)]
    try:
        from uvicorn.server import ServerState
    except ImportError:
        short.append("uvicorn.server.ServerState")
    else:
        state_attributes = _instance_attributes(ServerState)
        short += [
            f"ServerState.{a}" for a in SHORT_SERVER_STATE_ATTRIBUTES if a not in state_attributes
        ]
    # CallbackCycle takes the place of uvicorn's cycle: it must have whatever uvicorn's
    # protocol touches on the cycle in its slot.
    try:
        from receiver.intake.protocol import CallbackCycle
    except ImportError as exc:
        short.append(f"what receiver/intake/protocol.py imports ({exc})")
    else:
        provided = set(CallbackCycle.__slots__) | {"run_asgi"}
        used = set(_CYCLE_USE.findall(_source(protocol_class)))
        short += [f"HttpToolsProtocol's use of cycle.{a}" for a in sorted(used - provided)]
    if not guard:
        try:
            import receiver.intake.guarded_protocol  # noqa: F401
        except ImportError as exc:
            guard.append(f"what receiver/intake/guarded_protocol.py imports ({exc})")
    return Compatibility(tuple(guard), tuple(short))


def _defines(cls: type[Any], name: str) -> bool:
    """Whether uvicorn's class (not asyncio's base classes) defines the method ``name``."""
    bases = (asyncio.Protocol, asyncio.BaseProtocol, object)
    return any(name in vars(klass) for klass in cls.__mro__ if klass not in bases)


def _source(cls: type[Any]) -> str:
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):  # no source installed (a zipped or compiled install)
        return ""


def _instance_attributes(cls: type[Any]) -> set[str]:
    """The attributes a class has or assigns to ``self`` anywhere in its source."""
    return set(dir(cls)) | set(_ASSIGNED.findall(_source(cls)))
