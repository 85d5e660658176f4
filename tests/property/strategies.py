"""Hypothesis strategies for what the outside world can send signback.

Biased towards what has broken services like this one: text with NUL characters and lone
surrogates, text longer than a column, numbers beyond 64 bits or a double's range, NaN,
deep nesting, and bytes that are not UTF-8 — mixed with values that pass every check, so
that the generated inputs reach the code behind the checks too.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from typing import Any

from hypothesis import strategies as st

from handlers.firma.events import EVENT_KINDS
from handlers.firma.signature import compute, sign
from handlers.okdokument.adapter import DOCUMENT_STATE_KINDS

# Every code point, lone surrogates (category Cs) and NUL included.
ANY_CHAR = st.characters(exclude_categories=())

NASTY_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "a\x00b",
        "\ud800",
        "x\udfff",
        "\ud83d\ude00",  # a valid pair, as json.loads gives it for "\ud83d\ude00"
        "😀",
        "\u202e",
        "%00",
        "../..",
        "\r\n",
        "x" * 201,
        "y" * 1000,
        "1e308",
        "-0",
        "NaN",
        "null",
        "<script>",
    ]
)

# Lone surrogates are 2,048 of 1.1 million code points: drawn on purpose, with NUL and
# other controls, among ASCII.
EDGE_CHAR = st.one_of(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.characters(max_codepoint=0x1F),
    st.characters(max_codepoint=0x7F),
)
text = st.one_of(
    st.text(ANY_CHAR, max_size=40),
    NASTY_TEXT,
    st.text(EDGE_CHAR, min_size=1, max_size=20),
    st.text(ANY_CHAR, max_size=300),
)

# Numbers a JSON body can carry: huge integers, a double's extremes, non-finite ones (the
# standard library's parser reads NaN and Infinity).
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**80), max_value=10**80),
    # Past a double's range too (float() raises OverflowError on them): 10**309 and up.
    st.sampled_from([0, -1, 2**63 - 1, 2**63, -(2**63) - 1, 10**70, 10**300, 10**309]),
    st.sampled_from([-(10**400), 10**400, 10**4000]),
    st.floats(),
    st.sampled_from([1e15, 1e308, -1e308, 5e-324, float("inf"), float("nan")]),
)

# Timestamps as a provider might send them (or get them wrong).
_YEAR_2000, _YEAR_2100 = 946_684_800, 4_102_444_800
plausible_timestamps = st.one_of(
    st.integers(min_value=_YEAR_2000, max_value=_YEAR_2100 - 1),
    st.floats(min_value=_YEAR_2000, max_value=_YEAR_2100 - 1),
    st.integers(min_value=_YEAR_2000 * 1000, max_value=_YEAR_2100 * 1000 - 1),
    st.datetimes(min_value=dt.datetime(2000, 1, 2), max_value=dt.datetime(2099, 12, 30)).map(
        lambda d: d.isoformat() + "Z"
    ),
)
timestamps = st.one_of(
    plausible_timestamps,
    plausible_timestamps,
    numbers,
    st.integers(min_value=0, max_value=5_000_000_000),  # plausible seconds
    st.integers(min_value=0, max_value=5_000_000_000_000),  # plausible milliseconds
    st.datetimes().map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.sampled_from(["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "1e15"]),
    text,
    st.booleans(),
    st.none(),
)


@st.composite
def mostly(
    draw: st.DrawFn,
    usual: st.SearchStrategy[Any],
    other: st.SearchStrategy[Any],
    *,
    one_in: int = 5,
) -> Any:
    """``usual`` except about one time in ``one_in``: ``st.one_of`` draws its branches
    about equally, which sends too few inputs past the first check. (A ``sampled_from``
    choice: Hypothesis draws bounded integers towards both ends, far more than 1 in n.)"""
    odd_one = draw(st.sampled_from([False] * (one_in - 1) + [True]))
    return draw(other if odd_one else usual)


scalars = st.one_of(st.none(), st.booleans(), numbers, text)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(text, children, max_size=4),
    ),
    max_leaves=12,
)


def nested(depth: int) -> bytes:
    """A JSON object holding arrays ``depth`` deep (past every parser's limit for large
    depths: orjson's 1,024, the standard library's recursion limit)."""
    return b'{"a":' + b"[" * depth + b"]" * depth + b"}"


@st.composite
def json_bytes(draw: st.DrawFn, value: st.SearchStrategy[Any] = json_values) -> bytes:
    """``value`` written as JSON the ways a client might: ASCII escapes (a lone surrogate
    as ``\\ud800``, which is valid JSON), raw UTF-8 (a lone surrogate as invalid UTF-8
    bytes), with a byte-order mark, or as UTF-16."""
    document = draw(value)
    how = draw(mostly(st.just("ascii"), st.sampled_from(["utf-8", "bom", "utf-16"])))
    if how == "ascii":
        return json.dumps(document).encode()
    raw = json.dumps(document, ensure_ascii=False)
    if how == "utf-16":
        return raw.encode("utf-16", "surrogatepass")
    encoded = raw.encode("utf-8", "surrogatepass")
    return b"\xef\xbb\xbf" + encoded if how == "bom" else encoded


def bodies(objects: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Mostly ``objects`` as JSON; sometimes any JSON, any bytes or a deeply nested one."""
    return mostly(
        json_bytes(objects),
        st.one_of(
            json_bytes(),
            st.binary(max_size=200),
            st.sampled_from([nested(2_000), nested(100_000), b"", b"{", b"\xff\xfe\x00"]),
        ),
    )


OKDOKUMENT_STATES = st.sampled_from(sorted(DOCUMENT_STATE_KINDS))


def sendinfo_objects(signature_request_id: str) -> st.SearchStrategy[dict[str, Any]]:
    """OKdokument sendInfo bodies. Mostly for the request itself (the route stores only
    those), with known or any states; else wrong ids, missing or mistyped fields."""
    plausible = st.fixed_dictionaries(
        {
            "signatureRequestId": mostly(st.just(signature_request_id), text, one_in=4),
            "state": st.one_of(OKDOKUMENT_STATES, text),
        },
        optional={"id": st.one_of(text, json_values), "extra": json_values},
    )
    anything = st.fixed_dictionaries(
        {},
        optional={
            "signatureRequestId": st.one_of(st.just(signature_request_id), text, json_values),
            "state": st.one_of(OKDOKUMENT_STATES, text, json_values),
            "id": st.one_of(text, json_values),
            "extra": json_values,
        },
    )
    return mostly(plausible, anything, one_in=3)


FIRMA_TYPES = st.one_of(st.sampled_from(sorted(EVENT_KINDS)), text)
KNOWN_FIRMA_TYPES = st.sampled_from(sorted(EVENT_KINDS))


# Ids Firma could send (UUIDs, "evt_…"), and printable text up to past the 200-character limit.
PRINTABLE = st.characters(categories=("L", "M", "N", "P", "S"))
good_ids = st.one_of(
    st.uuids().map(str),
    st.builds(lambda n: f"evt_{n}", st.integers(min_value=0)),
    st.text(PRINTABLE, min_size=1, max_size=210),
    st.text(PRINTABLE, min_size=190, max_size=210),
)


def firma_objects(signing_request_id: str) -> st.SearchStrategy[dict[str, Any]]:
    """Firma envelopes of both generations and mixtures: mostly well-formed ones about the
    request (so that the code behind the envelope checks is reached: timestamps, recipients,
    statuses), else with any part wrong."""
    ids = st.one_of(
        good_ids,
        st.text(ANY_CHAR, min_size=1, max_size=210),
        text,
        json_values,
    )
    request_ids = st.one_of(st.just(signing_request_id), ids)
    recipient = st.fixed_dictionaries(
        {},
        optional={
            "id": st.one_of(text, numbers),
            "email": text,
            "name": text,
            "first_name": text,
            "signed_at": timestamps,
        },
    )
    data = st.fixed_dictionaries(
        {},
        optional={
            "signing_request": st.one_of(
                request_ids,
                st.fixed_dictionaries(
                    {},
                    optional={
                        "id": request_ids,
                        "status": text,
                        "workspace_id": ids,
                    },
                ),
            ),
            "signing_request_id": request_ids,
            "recipients": st.lists(recipient, max_size=3),
            "recipient": recipient,
            "status": text,
            "workspace": st.fixed_dictionaries({}, optional={"id": ids}),
        },
    )
    plausible = st.fixed_dictionaries(
        {
            "id": good_ids,
            "type": st.one_of(KNOWN_FIRMA_TYPES, KNOWN_FIRMA_TYPES, FIRMA_TYPES),
            "data": st.fixed_dictionaries(
                {
                    "signing_request": st.fixed_dictionaries(
                        {"id": st.one_of(st.just(signing_request_id), good_ids)},
                        optional={"status": st.one_of(st.just("draft"), text)},
                    )
                },
                optional={
                    "recipients": st.lists(recipient, max_size=3),
                    "recipient": recipient,
                    "status": text,
                },
            ),
        },
        optional={
            "created_at": timestamps,
            "timestamp": timestamps,
            "workspace_id": good_ids,
            "company_id": text,
        },
    )
    anything = st.fixed_dictionaries(
        {},
        optional={
            "id": ids,
            "event_id": ids,
            "type": FIRMA_TYPES,
            "event_type": FIRMA_TYPES,
            "created_at": timestamps,
            "timestamp": timestamps,
            "workspace_id": ids,
            "signing_request_id": request_ids,
            "data": st.one_of(data, data, json_values),
        },
    )
    return mostly(plausible, anything, one_in=3)


# What an HTTP header value can hold (RFC 9110: visible ASCII, spaces, and bytes 0x80-0xFF
# read as Latin-1), without the outer spaces clients strip. Send it encoded as Latin-1.
header_text = st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=120).map(
    str.strip
)


def signature_headers(body: bytes, secret: str, now: int) -> st.SearchStrategy[str]:
    """``X-Firma-Signature`` values: mostly the right one (so the parser behind it is
    reached), else wrong, malformed, stale or from the future. Latin-1 text (see
    :data:`header_text`)."""
    good = sign(secret, body, now)
    digest = compute(secret, body, now)
    return st.one_of(
        st.just(good),
        st.just(good),
        st.just(good),
        st.just(f"t = {now} , v1 = {digest} , v0=x"),
        st.just(f"t={now},v1={'0' * 64},v1={digest}"),
        st.just(f"t={now - 100_000},v1={compute(secret, body, now - 100_000)}"),
        st.just(f"t={now + 100_000},v1={compute(secret, body, now + 100_000)}"),
        header_text,
        st.builds(
            lambda t, v: f"t={t},v1={v}",
            st.one_of(st.integers(), header_text),
            st.one_of(st.text("0123456789abcdefABCDEF", max_size=70), header_text),
        ),
    )


def query_strings() -> st.SearchStrategy[str]:
    """Raw query strings of a browser return: the documented keys with any values (ts
    included), unknown keys, and broken percent-escapes."""

    def encoded(value: str) -> str:
        return urllib.parse.quote(value.encode("utf-8", "surrogatepass"), safe="")

    keys = st.one_of(st.sampled_from(["result", "ts", "lang", "docid", "name"]), text)
    values = st.one_of(
        st.sampled_from(["success", "close", "mobile"]),
        st.integers(min_value=-(10**30), max_value=10**30).map(str),
        st.sampled_from(["999999999999999", "1700000000123", "0", "9" * 5000]),
        text,
    )
    pair = st.builds(lambda k, v: f"{encoded(k)}={encoded(v)}", keys, values)
    junk = st.sampled_from(["%", "%zz", "%00", "%ff", "&&", "=", ";", "a=b=c", "+", "%u00e9"])
    return st.lists(st.one_of(pair, pair, junk), max_size=8).map("&".join)


# Admin API inputs.
path_ids = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(
        [
            "0",
            "1",
            "9223372036854775807",
            "9223372036854775808",
            "9" * 5000,
            "\u00b2",
            "\u0661",
            "1e3",
        ]
    ),
    st.text(ANY_CHAR, min_size=1, max_size=30),
)

filter_values = st.one_of(
    st.sampled_from(
        [
            "",
            "0",
            "1",
            "pending",
            "dead",
            "completed",
            "okdokument",
            "firma",
            "99999999999999999999999",
        ]
    ),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    text,
)

urls = st.one_of(
    st.sampled_from(
        ["https://shop.example/thanks", "http://[::1]:0/x", "https://xn--e1a.example/"]
    ),
    st.builds(lambda path: "https://shop.example/" + path, text.map(lambda t: t[:100])),
    text,
)
firma_defaults = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {},
        optional={
            "name": text,
            "expiration_hours": st.one_of(st.integers(), json_values),
            "settings": st.one_of(st.dictionaries(text, st.booleans(), max_size=3), json_values),
            "language": st.one_of(st.sampled_from(["en", "pt-BR"]), text),
            "completion_redirect_url": st.one_of(st.just("{signback.return_url}"), urls),
        },
    ),
    json_values,
)
_registration_fields = {
    "documentId": st.one_of(text, st.none()),
    "reference": st.one_of(text, st.none()),
    "return_url": urls,
    "retry_url": urls,
    "metadata": st.one_of(st.dictionaries(text, json_values, max_size=4), json_values),
    "defaults": firma_defaults,
}
# Mostly registrations that can succeed (known provider, a fresh id), with any other field;
# else anything.
registration_objects = st.one_of(
    st.fixed_dictionaries(
        {
            "provider": st.sampled_from(["okdokument", "firma"]),
            "signatureRequestId": st.one_of(st.uuids().map(str), good_ids),
        },
        optional=_registration_fields,
    ),
    st.fixed_dictionaries(
        {
            "provider": st.sampled_from(["okdokument", "firma"]),
            "signatureRequestId": st.one_of(st.uuids().map(str), good_ids),
        },
        optional=_registration_fields,
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "provider": st.one_of(st.sampled_from(["okdokument", "firma"]), text),
            "signatureRequestId": st.one_of(st.uuids().map(str), text, json_values),
            "signature_request_id": text,
            **_registration_fields,
        },
    ),
)
