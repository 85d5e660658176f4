"""The connection cap, the descriptor limit and the body budget (receiver/intake/connguard.py)."""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any

import pytest

from receiver.intake.connguard import (
    BodyBudget,
    ConnectionRegistry,
    connection_cap,
    raise_descriptor_limit,
)
from receiver.settings import Settings
from tests.conftest import test_settings


def settings(**overrides: Any) -> Settings:
    return test_settings("sqlite:///unused.db", **overrides)


def test_the_cap_leaves_room_for_everything_else_a_process_opens() -> None:
    # 1,024 files: 128 fixed, 2 per outbox slot (16), 1 per reconcile read in flight (8)
    # and 16 for confirmations.
    assert connection_cap(settings(), 1024) == (1024 - 128 - 32 - 8 - 16, None)
    on_postgres = test_settings("postgresql://x/y", db_pool_max=20)
    assert connection_cap(on_postgres, 1024) == (1024 - 128 - 22 - 32 - 8 - 16, None)
    assert connection_cap(settings(), 1_000_000) == (4096, None)  # the default ceiling
    assert connection_cap(settings(max_connections=100), 1024) == (100, None)


def test_a_configured_cap_that_does_not_fit_is_lowered_with_a_warning() -> None:
    cap, warning = connection_cap(settings(max_connections=5000), 1024)
    assert cap == 840
    assert warning is not None
    assert "SIGNBACK_MAX_CONNECTIONS=5000" in warning
    assert "1024 open files" in warning


def test_the_soft_descriptor_limit_is_raised_as_far_as_the_hard_one_allows() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 600:
        pytest.skip(f"this process may open only {hard} files")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert raise_descriptor_limit(wanted=512) == 512
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (512, hard)
        assert raise_descriptor_limit(wanted=300) == 512  # never lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_body_budget_refuses_what_does_not_fit_and_takes_it_back() -> None:
    budget = BodyBudget(100)
    assert budget.take(60)
    assert not budget.take(41)  # nothing reserved for a refusal
    assert budget.take(40)
    assert (budget.in_flight, budget.peak, budget.refused) == (100, 100, 1)
    budget.give_back(60)
    budget.give_back(40)
    assert budget.in_flight == 0


@dataclass(eq=False)
class Conn:
    state: str  # "idle", "head" (still sending its head), "body" (its body) or "busy"
    evicted: bool = False

    def waiting_for_request(self) -> bool:
        return self.state == "idle"

    def receiving_head(self) -> bool:
        return self.state == "head"

    def receiving_body(self) -> bool:
        return self.state == "body"

    def evict(self) -> None:
        self.evicted = True


def test_at_the_cap_the_longest_idle_connection_gives_way_first() -> None:
    registry = ConnectionRegistry(cap=3)
    busy, head, idle = Conn("busy"), Conn("head"), Conn("idle")
    for conn in (busy, head, idle):
        assert registry.admit(conn)
    newcomer = Conn("idle")
    assert registry.admit(newcomer)
    assert idle.evicted  # idle before a slow head, though the head is older
    assert not head.evicted
    assert list(registry.open) == [busy, head, newcomer]
    assert registry.admit(Conn("busy"))
    assert newcomer.evicted  # the oldest idle one
    assert registry.admit(Conn("busy"))
    assert head.evicted  # then a slow head
    assert not registry.admit(Conn("idle"))  # every connection is busy: refused
    assert (registry.evicted, registry.refused, len(registry.open)) == (3, 1, 3)
    registry.leave(busy)
    assert registry.admit(Conn("idle"))


def test_at_the_cap_a_body_still_arriving_gives_way_after_idle_and_heads() -> None:
    """Connections trickling bodies used to be untouchable: a flood of them kept every
    health check out. The oldest gives way, after idle connections and slow heads."""
    registry = ConnectionRegistry(cap=3)
    body_old, busy, head = Conn("body"), Conn("busy"), Conn("head")
    for conn in (body_old, busy, head):
        assert registry.admit(conn)
    assert registry.admit(Conn("busy"))
    assert head.evicted  # a slow head first
    assert not body_old.evicted
    assert registry.admit(Conn("busy"))
    assert body_old.evicted  # then the oldest body
    assert not busy.evicted
    assert not registry.admit(Conn("idle"))  # only requests being answered: refused
