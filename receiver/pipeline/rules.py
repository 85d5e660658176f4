"""Business rules: plain functions ``(event, request) -> actions``, registered by event kind.

A rule module is any importable module. Mark functions with :func:`rule`; nothing happens
at import time — :meth:`RuleBook.load` collects the marked functions of the modules it is
given (the shipped ``handlers.*.rules`` and the user's ``SIGNBACK_RULES_MODULE``)::

    from receiver import Action, EventKind, rule

    @rule(EventKind.REQUEST_COMPLETED, provider="acme")
    def thank_you_page(event, request):
        if request.metadata.get("thanks_url"):
            yield Action("acme.patch_request",
                         {"redirect_url": request.metadata["thanks_url"]}, key="thanks-page")

Rules run inside the pipeline's transaction: they must be pure and quick (no I/O). Anything
that talks to a provider is an :class:`~receiver.model.Action`, sent later by the outbox.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from receiver.errors import ConfigurationError
from receiver.events import EventKind, NormalizedEvent
from receiver.model import Action, SignatureRequest

RuleFunction = Callable[[NormalizedEvent, SignatureRequest], Iterable[Action] | None]
F = TypeVar("F", bound=RuleFunction)

_MARK = "__signback_rule__"


@dataclass(frozen=True, slots=True)
class RuleSpec:
    kinds: frozenset[EventKind]
    provider: str | None  # None: every provider
    # False (the default): runs only on confirmed events, after the state was updated.
    # True: runs only on unconfirmed claims (used by the confirm-before-acting rule).
    unconfirmed: bool
    # The boolean setting that switches it: a core Settings field ("run_worker"), or a
    # provider's as "<provider>.<field>" ("acme.confirm_callbacks").
    enabled_setting: str | None


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    function: RuleFunction
    spec: RuleSpec


def rule(
    *kinds: EventKind,
    provider: str | None = None,
    unconfirmed: bool = False,
    enabled_setting: str | None = None,
) -> Callable[[F], F]:
    """Mark a function as a business rule for the given event kinds."""
    if not kinds:
        raise TypeError("rule() needs at least one EventKind")

    def mark(function: F) -> F:
        setattr(function, _MARK, RuleSpec(frozenset(kinds), provider, unconfirmed, enabled_setting))
        return function

    return mark


def _setting(settings: Any, name: str) -> tuple[bool, Any]:
    """(whether it exists, its value): a core setting, or ``<provider>.<field>``."""
    owner, dot, field = name.rpartition(".")
    target = settings
    if dot:
        by_name = getattr(settings, "section_named", None)
        target = by_name(owner) if callable(by_name) else getattr(settings, owner, None)
    if target is None or not hasattr(target, field):
        return False, None
    return True, getattr(target, field)


class RuleBook:
    """The rules in force, looked up by (kind, provider, confirmed)."""

    def __init__(self, rules: Sequence[Rule] = ()) -> None:
        self.rules = list(rules)

    @classmethod
    def load(cls, modules: Iterable[str], settings: Any = None) -> RuleBook:
        rules: list[Rule] = []
        for module_name in modules:
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise ConfigurationError(
                    f"cannot import rules module {module_name!r} (SIGNBACK_RULES_MODULE): {exc}"
                ) from exc
            for name, value in vars(module).items():
                spec = getattr(value, _MARK, None)
                if not isinstance(spec, RuleSpec) or not callable(value):
                    continue
                if spec.enabled_setting is not None and settings is not None:
                    found, switch = _setting(settings, spec.enabled_setting)
                    if not found:
                        raise ConfigurationError(
                            f"rule {module_name}.{name} is switched by {spec.enabled_setting!r},"
                            " which is not a setting"
                        )
                    if not bool(switch):
                        continue
                rules.append(Rule(f"{module_name}.{name}", value, spec))
        return cls(rules)

    def matching(self, event: NormalizedEvent) -> list[Rule]:
        return [
            r
            for r in self.rules
            if event.kind in r.spec.kinds
            and (r.spec.provider is None or r.spec.provider == event.provider)
            and r.spec.unconfirmed == (not event.confirmed)
        ]

    def actions_for(self, event: NormalizedEvent, request: SignatureRequest) -> list[Action]:
        actions: list[Action] = []
        for r in self.matching(event):
            produced = r.function(event, request)
            for action in produced or ():
                if not isinstance(action, Action):
                    raise TypeError(f"rule {r.name} produced {action!r}, not an Action")
                actions.append(action)
        return actions
