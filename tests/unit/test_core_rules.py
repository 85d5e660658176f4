"""Business-rule registration and lookup (receiver/pipeline/rules.py), with core_rules_sample.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from receiver.errors import ConfigurationError
from receiver.events import EventKind, NormalizedEvent
from receiver.model import Action, RequestState, SignatureRequest
from receiver.pipeline.rules import Rule, RuleBook, RuleSpec, rule
from tests.unit import core_rules_sample as sample

SAMPLE = "tests.unit.core_rules_sample"
ALL_SAMPLE_RULES = [
    "on_completed",
    "okdokument_only",
    "confirm_first",
    "switchable",
    "returns_none",
    "yields_garbage",
]
REQUEST = SignatureRequest(id=7, provider="okdokument", external_id="SR-7", state=RequestState.SENT)


def event(
    kind: EventKind, provider: str = "okdokument", *, confirmed: bool = True
) -> NormalizedEvent:
    return NormalizedEvent(
        provider=provider,
        kind=kind,
        provider_type="test",
        external_id="SR-7",
        confirmed=confirmed,
    )


def short_names(rules: list[Rule]) -> list[str]:
    return [r.name.removeprefix(SAMPLE + ".") for r in rules]


@pytest.fixture
def book() -> RuleBook:
    return RuleBook.load([SAMPLE])


@pytest.mark.parametrize(
    ("function", "spec"),
    [
        (
            sample.on_completed,
            RuleSpec(frozenset({EventKind.REQUEST_COMPLETED}), None, False, None),
        ),
        (
            sample.okdokument_only,
            RuleSpec(
                frozenset({EventKind.REQUEST_COMPLETED, EventKind.REQUEST_CANCELLED}),
                "okdokument",
                False,
                None,
            ),
        ),
        (
            sample.confirm_first,
            RuleSpec(frozenset({EventKind.REQUEST_COMPLETED}), None, True, None),
        ),
        (
            sample.switchable,
            RuleSpec(frozenset({EventKind.REQUEST_SENT}), None, False, "sample_switch"),
        ),
    ],
)
def test_rule_marks_the_function_and_returns_it_unchanged(function: Any, spec: RuleSpec) -> None:
    assert getattr(function, "__signback_rule__") == spec  # noqa: B009


def test_rule_returns_the_same_function() -> None:
    def f(event: NormalizedEvent, request: SignatureRequest) -> None:
        return None

    assert rule(EventKind.TEST)(f) is f


def test_rule_needs_at_least_one_kind() -> None:
    with pytest.raises(TypeError, match="at least one EventKind"):
        rule()


def test_load_collects_only_marked_functions_in_definition_order(book: RuleBook) -> None:
    assert short_names(book.rules) == ALL_SAMPLE_RULES
    assert all(r.name.startswith(SAMPLE + ".") for r in book.rules)
    assert book.rules[0].function is sample.on_completed


@pytest.mark.parametrize(
    ("settings", "switched_on"),
    [
        pytest.param(None, True, id="no-settings"),
        pytest.param(SimpleNamespace(sample_switch=True), True, id="on"),
        pytest.param(SimpleNamespace(sample_switch=False), False, id="off"),
        pytest.param(SimpleNamespace(sample_switch=0), False, id="falsy"),
        pytest.param(SimpleNamespace(sample_switch="yes"), True, id="truthy"),
    ],
)
def test_enabled_setting_switches_a_rule(settings: Any, switched_on: bool) -> None:
    loaded = RuleBook.load([SAMPLE], settings)
    names = short_names(loaded.rules)

    assert ("switchable" in names) is switched_on
    assert set(names) | {"switchable"} == set(ALL_SAMPLE_RULES)
    sent = event(EventKind.REQUEST_SENT)
    expected = [Action("sample.switchable", {}, key="switchable")] if switched_on else []
    assert loaded.actions_for(sent, REQUEST) == expected


@pytest.mark.parametrize(
    ("kind", "provider", "confirmed", "expected"),
    [
        (EventKind.REQUEST_COMPLETED, "okdokument", True, ["on_completed", "okdokument_only"]),
        (EventKind.REQUEST_COMPLETED, "firma", True, ["on_completed"]),
        (EventKind.REQUEST_COMPLETED, "okdokument", False, ["confirm_first"]),
        (EventKind.REQUEST_COMPLETED, "firma", False, ["confirm_first"]),
        (EventKind.REQUEST_CANCELLED, "okdokument", True, ["okdokument_only"]),
        (EventKind.REQUEST_CANCELLED, "okdokument", False, []),
        (EventKind.REQUEST_CANCELLED, "firma", True, []),
        (EventKind.REQUEST_SENT, "firma", True, ["switchable"]),
        (EventKind.REQUEST_SENT, "firma", False, []),
        (EventKind.REQUEST_VIEWED, "okdokument", True, ["returns_none"]),
        (EventKind.REQUEST_DECLINED, "firma", True, ["yields_garbage"]),
        (EventKind.REQUEST_EXPIRED, "okdokument", True, []),
        (EventKind.UNKNOWN, "okdokument", True, []),
    ],
)
def test_matching(
    book: RuleBook, kind: EventKind, provider: str, confirmed: bool, expected: list[str]
) -> None:
    assert short_names(book.matching(event(kind, provider, confirmed=confirmed))) == expected


@pytest.mark.parametrize(
    ("kind", "provider", "confirmed", "expected"),
    [
        (
            EventKind.REQUEST_COMPLETED,
            "okdokument",
            True,
            [
                Action("sample.thanks", {"id": "SR-7"}, key="completed"),
                Action(
                    "sample.okdokument", {"kind": "request.completed"}, key="ok-request.completed"
                ),
            ],
        ),
        (
            EventKind.REQUEST_COMPLETED,
            "okdokument",
            False,
            [Action("sample.confirm", {}, key="confirm")],
        ),
        (EventKind.REQUEST_VIEWED, "okdokument", True, []),
        (EventKind.REQUEST_EXPIRED, "okdokument", True, []),
    ],
)
def test_actions_for(
    book: RuleBook, kind: EventKind, provider: str, confirmed: bool, expected: list[Action]
) -> None:
    assert book.actions_for(event(kind, provider, confirmed=confirmed), REQUEST) == expected


def test_a_rule_producing_something_else_than_an_action_is_a_type_error(book: RuleBook) -> None:
    with pytest.raises(TypeError, match=rf"rule {SAMPLE}\.yields_garbage produced .*not an Action"):
        book.actions_for(event(EventKind.REQUEST_DECLINED), REQUEST)


def test_an_empty_rule_book_produces_nothing() -> None:
    assert RuleBook().actions_for(event(EventKind.REQUEST_COMPLETED), REQUEST) == []
    assert RuleBook.load([]).rules == []


@pytest.mark.parametrize(
    "module_name",
    ["tests.unit.no_such_rules_module", "no_such_package_signback.rules", "tests.unit.nope.deeper"],
)
def test_an_unimportable_module_is_a_configuration_error(module_name: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RuleBook.load([SAMPLE, module_name])
    assert repr(module_name) in str(caught.value)
    assert "SIGNBACK_RULES_MODULE" in str(caught.value)
