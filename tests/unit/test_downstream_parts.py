"""The pure parts of downstream delivery: the catalogue, the signer (checked against the
``standardwebhooks`` reference), secret sealing, the address rules and replay windows."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json

import pytest
from standardwebhooks.webhooks import Webhook

from receiver.events import EventKind
from receiver.model import RequestState
from receiver.outbox.downstream import catalogue, delivery_of, endpoint_of_lane, lane_of, signing
from receiver.outbox.downstream.events import body_for, document, iso
from receiver.outbox.downstream.manage import parse_time, replay_window
from receiver.outbox.downstream.safety import OutboundPolicy, UnsafeAddress, address_problem
from receiver.outbox.downstream.secrets import SecretBox, SecretUnreadable, key_bytes, new_secret

pytestmark = pytest.mark.anyio


def test_each_state_reached_emits_its_type_and_nothing_else_emits_without_news() -> None:
    S, K = RequestState, EventKind  # noqa: N806  (short names keep the table readable)
    assert catalogue.type_for(
        K.REQUEST_COMPLETED, before=S.SENT, after=S.COMPLETED, confirmed=True
    ) == ("signature_request.completed")
    assert catalogue.type_for(
        K.REQUEST_CREATED, before=S.REGISTERED, after=S.DRAFT, confirmed=True
    ) == ("signature_request.created")
    for state, event_type in catalogue.STATE_TYPES.items():
        assert catalogue.type_for(K.UNKNOWN, before=S.REGISTERED, after=state, confirmed=True) == (
            event_type
        )
    # Late or repeated: nothing.
    assert (
        catalogue.type_for(K.REQUEST_VIEWED, before=S.COMPLETED, after=S.COMPLETED, confirmed=True)
        is None
    )
    assert catalogue.type_for(K.REQUEST_SENT, before=S.SENT, after=S.SENT, confirmed=True) is None
    assert (
        catalogue.type_for(K.REQUEST_COMPLETED, before=S.SENT, after=S.SENT, confirmed=False)
        is None
    )
    # News without a state change.
    assert catalogue.type_for(K.SIGNER_RETURNED, before=S.SENT, after=S.SENT, confirmed=False) == (
        catalogue.SIGNER_RETURNED
    )
    assert catalogue.type_for(K.DELIVERY_FAILED, before=S.SENT, after=S.SENT, confirmed=True) == (
        catalogue.DELIVERY_FAILED
    )
    second_signer = catalogue.type_for(
        K.RECIPIENT_SIGNED, before=S.PARTIALLY_SIGNED, after=S.PARTIALLY_SIGNED, confirmed=True
    )
    assert second_signer == "signature_request.signer_signed"
    assert catalogue.type_for(K.INFORMATIONAL, before=S.SENT, after=S.SENT, confirmed=True) is None


def test_filters() -> None:
    assert catalogue.wanted("signature_request.sent", [])
    assert not catalogue.wanted("signback.action.dead", [])
    assert catalogue.wanted("signback.action.dead", ["signback.*"])
    assert not catalogue.wanted("signature_request.sent", ["signback.*"])
    assert catalogue.wanted("signature_request.sent", ["signature_request.*"])
    assert catalogue.wanted("signback.test", ["signback.test"])
    assert catalogue.filter_problem(["signature_request.*", "signback.test"]) is None
    problem = catalogue.filter_problem(["signature_request.signed"])
    assert problem is not None
    assert problem.startswith("unknown event type(s) signature_request.signed")


def test_the_signature_is_what_the_reference_library_computes_and_verifies() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    body = json.dumps({"type": "signback.test", "ü": "ß"}, ensure_ascii=False).encode()
    now = int(dt.datetime.now(dt.UTC).timestamp())
    headers = signing.headers([key_bytes(secret)], "msg_abc_1", now, body)
    reference = Webhook(secret).sign("msg_abc_1", dt.datetime.fromtimestamp(now, dt.UTC), body)
    assert headers["webhook-signature"] == reference
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    other = new_secret()
    both = signing.headers([key_bytes(other), key_bytes(secret)], "msg_abc_1", now, body)
    Webhook(secret).verify(body, both)  # either secret verifies a two-signature header
    Webhook(other).verify(body, both)
    assert signing.message_id("evt_0123", 7) == "msg_0123_7"


def test_secrets_are_sealed_under_the_secret_key() -> None:
    box = SecretBox("k" * 40)
    secret = new_secret()
    sealed = box.seal(secret)
    assert sealed.startswith("v1:")
    assert secret not in sealed
    assert box.seal(secret) != sealed  # a fresh nonce each time
    assert box.open(sealed) == secret
    with pytest.raises(SecretUnreadable):
        SecretBox("another key, of at least 32 chars").open(sealed)
    with pytest.raises(SecretUnreadable):
        box.open(sealed[:-4] + "AAAA")
    with pytest.raises(SecretUnreadable):
        box.open("plain")
    assert "v1" not in repr(box)


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.2", "127.0.0.2 is a loopback address"),
        ("10.0.0.1", "10.0.0.1 is a private address"),
        ("172.16.5.4", "172.16.5.4 is a private address"),
        ("192.168.1.1", "192.168.1.1 is a private address"),
        ("169.254.0.1", "169.254.0.1 is a link-local address"),
        ("224.0.0.1", "224.0.0.1 is a multicast address"),
        ("0.0.0.0", "0.0.0.0 is an unspecified address"),
        ("100.64.1.1", "100.64.1.1 is not a public address"),
        ("240.0.0.1", "240.0.0.1 is a private address"),
        ("fc00::1", "fc00::1 is a private address"),
        ("fe80::1", "fe80::1 is a link-local address"),
        ("::ffff:10.0.0.1", "10.0.0.1 is a private address"),
        ("2002:a00:1::", "10.0.0.1 is a private address"),  # 6to4 of 10.0.0.1
    ],
)
def test_address_rules(address: str, problem: str | None) -> None:
    assert address_problem(ipaddress.ip_address(address)) == problem


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:0/hooks", "must not use port 0 (no server listens there)"),
        ("http://a..example.com/", "host a..example.com has an empty label"),
        ("http://.example.com/", "host .example.com has an empty label"),
        (f"http://{'a' * 64}.example.com/", "has a label longer than 63 characters"),
        (f"http://{'abcdefgh.' * 30}com/", "must have a host name of at most 253 characters"),
        ("http://example.com./hooks", None),  # a fully qualified name
        (f"http://{'a' * 63}.example.com/", None),
        ("http://127.0.0.1:1/hooks", None),
        ("http://[::1]:8080/hooks", None),
    ],
)
def test_urls_that_can_never_be_reached_are_refused(url: str, problem: str | None) -> None:
    found = OutboundPolicy(allow_private=True).url_problem(url)
    if problem is None:
        assert found is None
    else:
        assert problem in (found or ""), found


async def test_a_refusal_at_send_time_reads_as_one_sentence() -> None:
    """The name, the address it resolved to and what that is; a literal is not said to
    resolve to itself."""
    strict = OutboundPolicy()
    with pytest.raises(UnsafeAddress) as named:
        await strict.resolve("localhost", 80)
    assert str(named.value).startswith(
        "localhost resolves to 127.0.0.1, which is a loopback address (deliveries go to"
    )
    with pytest.raises(UnsafeAddress) as literal:
        await strict.resolve("127.0.0.1", 80)
    assert str(literal.value).startswith("127.0.0.1 is a loopback address (deliveries go to")
    with pytest.raises(UnsafeAddress) as mapped:
        await strict.resolve("::ffff:10.0.0.1", 80)
    assert str(mapped.value).startswith("10.0.0.1 is a private address (")


@pytest.mark.parametrize("host", ["a..example.com", f"{'a' * 64}.example.com"])
async def test_a_host_name_no_dns_can_hold_is_refused_at_send_time(host: str) -> None:
    """An endpoint stored before such names were refused at creation: each delivery is a
    refusal (recorded on the endpoint), not an internal error with a traceback."""
    for policy in (OutboundPolicy(), OutboundPolicy(allow_private=True)):
        with pytest.raises(UnsafeAddress, match="is not a valid host name"):
            await policy.resolve(host, 80)


async def test_resolution_checks_every_address() -> None:
    strict = OutboundPolicy()
    with pytest.raises(UnsafeAddress, match=r"localhost resolves to .* loopback"):
        await strict.resolve("localhost", 80)
    with pytest.raises(UnsafeAddress, match="does not resolve"):
        await strict.resolve("no-such-host.invalid", 80)
    assert await strict.resolve("8.8.8.8", 443) == ["8.8.8.8"]
    assert "127.0.0.1" in await OutboundPolicy(allow_private=True).resolve("localhost", 80)
    listed = OutboundPolicy(allow_private=True, allowed_hosts=("*.example.com",))
    with pytest.raises(UnsafeAddress, match="not in SIGNBACK_ENDPOINT_ALLOWED_HOSTS"):
        await listed.resolve("localhost", 80)


def test_lanes_and_delivery_payloads() -> None:
    assert lane_of(12) == "endpoint:12"
    assert endpoint_of_lane("endpoint:12") == 12
    assert endpoint_of_lane("provider") is None
    assert endpoint_of_lane("endpoint:x") is None
    assert delivery_of('{"endpoint":3,"event":9}') == (9, 3)
    assert delivery_of("{}") is None
    assert delivery_of("nope") is None


def test_documents_and_bodies() -> None:
    text = document("signback.test", "evt_" + "0" * 24, 1_760_000_000.5, {"message": "hi"})
    assert json.loads(text) == {
        "type": "signback.test",
        "id": "evt_" + "0" * 24,
        "timestamp": "2025-10-09T08:53:20.500000Z",
        "version": 1,
        "data": {"message": "hi"},
    }
    assert body_for(text, '{"a":1}', include_raw=False) == text.encode()
    assert json.loads(body_for(text, '{"a":1}', include_raw=True))["data"]["raw"] == {"a": 1}
    assert json.loads(body_for(text, None, include_raw=True))["data"]["raw"] is None
    # Text a provider may send that JSON cannot carry as is is made encodable.
    odd = document("signback.test", "evt_x", 0.0, {"t": "a\x00\ud800", "n": float("nan")})
    assert json.loads(odd)["data"] == {"t": "a\\x00\\ud800", "n": None}
    assert iso(None) is None
    assert iso(1e300) is None


def test_replay_windows() -> None:
    assert parse_time("2026-01-01T00:00:00Z", "since") == 1_767_225_600.0
    assert parse_time(1_767_225_600, "since") == 1_767_225_600.0
    assert parse_time(None, "since") is None
    for bad in ("tomorrow", "2026-01-01T00:00:00", True, [1], -5, float("inf")):
        with pytest.raises(ValueError, match="since"):
            parse_time(bad, "since")
    window, problems = replay_window({"since": 10, "until": 20, "request_id": 3})
    assert problems == []
    assert window == {"since": 10.0, "until": 20.0, "request_id": 3}
    _, problems = replay_window({"request_id": True, "until": 5, "since": 9, "other": 1})
    assert {p["field"] for p in problems} == {"request_id", "other"}
    assert replay_window(None) == ({"since": None, "until": None, "request_id": None}, [])
