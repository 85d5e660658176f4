"""The provider registry (receiver/providers/registry.py) and what the contract checks of a
provider (receiver/providers/contract.py)."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator

import pytest

from handlers.firma import PROVIDER as FIRMA
from handlers.okdokument import PROVIDER as OKDOKUMENT
from receiver.errors import ConfigurationError
from receiver.events import EventKind, NormalizedEvent
from receiver.providers import registry
from receiver.providers.contract import (
    Accepted,
    HookSpec,
    Provider,
    ProviderPackage,
    StoredCallback,
)
from receiver.providers.registry import MODULES_VARIABLE, discover
from receiver.settings import ProviderSettings, load_settings
from tests.conftest import ADMIN_TOKEN, SECRET_KEY


def normalize(callback: StoredCallback) -> NormalizedEvent:
    return NormalizedEvent(callback.provider, EventKind.UNKNOWN, "x", None)


def package(name: str) -> ProviderPackage[ProviderSettings]:
    return ProviderPackage(
        name=name, settings=ProviderSettings, build=lambda _: Provider(name, normalize)
    )


@pytest.fixture
def module(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """An importable module (no file) for SIGNBACK_PROVIDER_MODULES to name; what the
    registry found with it is forgotten afterwards (it reads each value once)."""
    found = types.ModuleType("registry_test_provider")
    monkeypatch.setitem(sys.modules, found.__name__, found)
    yield found
    registry._discover.cache_clear()


def test_the_shipped_providers_come_from_entry_points() -> None:
    found = discover("")
    assert found == {"firma": FIRMA, "okdokument": OKDOKUMENT}
    assert found["okdokument"].rules_module == "handlers.okdokument.rules"


def test_a_module_adds_a_provider(module: types.ModuleType) -> None:
    vars(module)["PROVIDER"] = package("acme")
    found = discover(f" {module.__name__} ,")
    assert sorted(found) == ["acme", "firma", "okdokument"]


def test_an_installed_provider_listed_again_is_the_same_one() -> None:
    assert discover("handlers.okdokument") == discover("")


@pytest.mark.parametrize("name", ["firma", "okdokument"])
def test_names_are_unique(module: types.ModuleType, name: str) -> None:
    vars(module)["PROVIDER"] = package(name)
    with pytest.raises(ConfigurationError, match=f"two providers are named '{name}'"):
        discover(module.__name__)


def test_a_module_that_cannot_be_imported_is_named() -> None:
    with pytest.raises(ConfigurationError, match=f"'no_such_module_here' \\({MODULES_VARIABLE}"):
        discover("no_such_module_here")


def test_a_module_without_a_provider_is_named(module: types.ModuleType) -> None:
    with pytest.raises(ConfigurationError, match="has no PROVIDER"):
        discover(module.__name__)
    vars(module)["PROVIDER"] = "acme"
    with pytest.raises(ConfigurationError, match=re.escape("expected a receiver.providers.")):
        discover(module.__name__ + ",")


def test_the_variable_is_read_at_start_and_its_errors_stop_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(MODULES_VARIABLE, "no_such_module_here")
    with pytest.raises(ConfigurationError) as caught:
        load_settings(admin_token=ADMIN_TOKEN, secret_key=SECRET_KEY, _env_file=None)
    assert str(caught.value).startswith("signback cannot start: cannot import provider module")


def accept(_call: object, _body: bytes, _found: object) -> Accepted:
    return Accepted("k", None)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        pytest.param({"name": "Acme"}, "lower-case", id="name"),
        pytest.param({"name": "a-b"}, "lower-case", id="name-dash"),
        pytest.param(
            {"hooks": [HookSpec("/hooks/other", "webhook", accept)]}, "start with", id="hook"
        ),
        pytest.param(
            {"hooks": [HookSpec("/hooks/acmex", "webhook", accept)]}, "start with", id="prefix"
        ),
        pytest.param({"urls": {"u": "/hooks/acme/{token}"}}, "using only", id="url-field"),
        pytest.param({"urls": {"u": "https://elsewhere/x"}}, "must be a path", id="url-path"),
        pytest.param({"operations": {"other.op": accept}}, "acme.", id="operation"),
    ],
)
def test_what_a_provider_declares_is_checked(kwargs: dict[str, object], problem: str) -> None:
    values: dict[str, object] = {"name": "acme", "normalize": normalize, **kwargs}
    with pytest.raises(ValueError, match=problem):
        Provider(**values)  # type: ignore[arg-type]


def test_hook_paths_given_by_a_function_are_checked_when_built() -> None:
    provider = Provider(
        "acme", normalize, hooks=lambda _ctx: [HookSpec("/hooks/other", "webhook", accept)]
    )
    with pytest.raises(ValueError, match="start with /hooks/acme"):
        provider.hook_specs(None)  # type: ignore[arg-type]
