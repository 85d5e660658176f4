"""Which providers are installed: one registry, read once per process.

Two sources, merged:

- the ``signback.providers`` entry-point group: a distribution declares its providers in its
  ``pyproject.toml`` (signback declares the two it ships)::

      [project.entry-points."signback.providers"]
      acme = "acme_signback:PROVIDER"

- ``SIGNBACK_PROVIDER_MODULES``: comma-separated module paths, each with a ``PROVIDER``, for
  providers that are not installed as a distribution (an in-house package on the path, a
  provider that exists only in the tests).

Each names a :class:`~receiver.providers.contract.ProviderPackage`. Names must be unique;
importing a package must be cheap (it builds nothing until the app starts).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
from collections.abc import Mapping
from typing import Any

from receiver.errors import ConfigurationError
from receiver.providers.contract import ProviderPackage

ENTRY_POINT_GROUP = "signback.providers"
MODULES_VARIABLE = "SIGNBACK_PROVIDER_MODULES"

Packages = Mapping[str, ProviderPackage[Any]]


def modules_from_env() -> str:
    """``SIGNBACK_PROVIDER_MODULES`` from the environment, else from ``./.env`` (as the
    settings read it), else ""."""
    value = os.environ.get(MODULES_VARIABLE)
    if value is None and os.path.exists(".env"):
        from dotenv import dotenv_values

        value = dotenv_values(".env").get(MODULES_VARIABLE)
    return value or ""


def discover(modules: str | None = None) -> Packages:
    """The installed providers by name: the entry points, then ``modules`` (a
    ``SIGNBACK_PROVIDER_MODULES`` value; read from the environment when None)."""
    return _discover(modules_from_env() if modules is None else modules)


@functools.cache
def _discover(modules: str) -> Packages:
    found: dict[str, ProviderPackage[Any]] = {}
    origins: dict[str, str] = {}

    def add(package: object, origin: str) -> None:
        if not isinstance(package, ProviderPackage):
            raise ConfigurationError(
                f"{origin} is not a provider: expected a receiver.providers.ProviderPackage, "
                f"got {type(package).__name__}"
            )
        existing = found.get(package.name)
        if existing is package:
            return  # installed and also listed in SIGNBACK_PROVIDER_MODULES: the same one
        if existing is not None:
            raise ConfigurationError(
                f"two providers are named {package.name!r}: {origins[package.name]} and "
                f"{origin}; provider names must be unique"
            )
        found[package.name] = package
        origins[package.name] = origin

    points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    for point in sorted(points, key=lambda p: (p.name, p.value)):
        origin = f"entry point {point.name} = {point.value!r} ({ENTRY_POINT_GROUP})"
        try:
            package = point.load()
        except Exception as exc:
            raise ConfigurationError(f"cannot load provider {origin}: {exc}") from exc
        if isinstance(package, ProviderPackage) and package.name != point.name:
            raise ConfigurationError(f"{origin} names a provider called {package.name!r}")
        add(package, origin)
    for module_name in (part.strip() for part in modules.split(",")):
        if not module_name:
            continue
        origin = f"module {module_name!r} ({MODULES_VARIABLE})"
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigurationError(f"cannot import provider {origin}: {exc}") from exc
        if not hasattr(module, "PROVIDER"):
            raise ConfigurationError(f"provider {origin} has no PROVIDER")
        add(module.PROVIDER, origin)
    if not found:
        raise ConfigurationError(
            f"no provider is installed: the {ENTRY_POINT_GROUP!r} entry points are missing "
            "(reinstall signback: python3 scripts/run.py does; a stale signback.egg-info "
            f"folder in the checkout hides them, delete it) and {MODULES_VARIABLE} lists none"
        )
    return found
