"""The real app over real HTTP, on SQLite and PostgreSQL, fed generated inputs.

Each test serves signback (``running_receiver``: uvicorn with signback's own protocol, the
pipeline and the outbox running) and sends it a few hundred generated requests of one
kind: OKdokument sendInfos, signed Firma webhooks, browser returns, admin calls. Every
answer must be one of the route's documented ones, never a 5xx. Then, once the pipeline
has worked off what was stored, every acknowledged callback must be processed (none
failed), and every view of the stored data must answer 200 with strict JSON: the request
pages, the inbox, the outbox and the request list.
"""

from __future__ import annotations

import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from handlers.firma import signature
from receiver.settings import Settings
from tests.harness import Receiver, running_receiver, wait_until
from tests.property import strategies as s
from tests.property.conftest import examples

# The receiver under test runs in other threads while Hypothesis draws examples, and
# psycopg_pool jitters each new connection's lifetime with the process-wide `random`:
# Hypothesis takes that for a strategy using `random` and fails the example once (then not
# on replay: "unreliable results"). Our strategies use no `random`; receiver code uses its
# own generators (receiver/backoff.py).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)

FIRMA_SECRET = "firma-test-secret"  # tests.conftest.test_settings configures it
SR_ID, FIRMA_ID = "sr-prop", "fsr-prop"


@pytest.fixture
def receiver(make_settings: Callable[..., Settings]) -> Iterator[Receiver]:
    # No provider is reachable: actions fail fast in the background and, after two tries,
    # are dead (rendered like any other). What matters here is what comes in.
    with running_receiver(
        make_settings,
        okdokument_base_url="http://127.0.0.1:9",
        firma_base_url="http://127.0.0.1:9/functions/v1/signing-request-api",
        outbox_max_attempts=2,
    ) as served:
        yield served


def strict_json(response: httpx.Response) -> Any:
    """The body as JSON, read by orjson: it refuses NaN, Infinity and lone surrogates."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return orjson.loads(response.content)


def settled(receiver: Receiver) -> dict[str, int]:
    """Wait for the pipeline to work off the inbox; its counts by status."""

    def probe() -> tuple[dict[str, int]] | None:
        with receiver.admin() as admin:
            counts: dict[str, int] = strict_json(admin.get("/api/stats"))["inbox"]
        busy = counts.get("pending", 0) + counts.get("processing", 0)
        return None if busy else (counts,)

    return wait_until(probe, timeout=60, interval=0.1, what="the inbox to be worked off")[0]


def assert_everything_renders(receiver: Receiver) -> None:
    """Every acknowledged callback was processed, and every view of what is stored answers
    200 with strict JSON."""
    counts = settled(receiver)
    assert counts.get("failed", 0) == 0, counts
    with receiver.admin() as admin:
        for path in ("/api/inbox?limit=1000", "/api/outbox?limit=1000", "/api/stats"):
            response = admin.get(path)
            assert response.status_code == 200, (path, response.text)
            strict_json(response)
        before: int | None = None
        while True:
            query = "limit=500" + (f"&before_id={before}" if before is not None else "")
            response = admin.get(f"/api/requests?{query}")
            assert response.status_code == 200, response.text
            page = strict_json(response)
            for item in page["items"]:
                shown = admin.get(f"/api/requests/{item['id']}")
                assert shown.status_code == 200, shown.text
                strict_json(shown)
            before = page["next_before_id"]
            if before is None:
                break
        failed = strict_json(admin.get("/api/inbox?status=failed"))["items"]
        assert failed == [], failed


# Log events that mean an exception nothing handled: the answer's 500 (the hook router or
# the app's error handler), and a row the pipeline could not process.
UNHANDLED = frozenset({"unhandled error", "processing failed", "cannot normalize callback"})


def assert_nothing_unhandled(capsys: pytest.CaptureFixture[str]) -> None:
    """No log line of the test (signback's JSON lines on stderr) reports an exception
    that nothing handled."""
    unhandled = []
    seen = 0
    for line in capsys.readouterr().err.splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # uvicorn's and the pool's own lines
        if isinstance(entry, dict) and "event" in entry:
            seen += 1
            if entry["event"] in UNHANDLED:
                unhandled.append(entry)
    assert seen > 0, "no log line was captured: this check would see nothing"
    assert unhandled == [], unhandled[:3]


def path_of(url: str, receiver: Receiver) -> str:
    return url.removeprefix(receiver.url)


def latin1(value: str) -> bytes:
    """A header value as its bytes (httpx would send only ASCII text)."""
    return value.encode("latin-1")


def encoded(text: str) -> str:
    """``text`` percent-encoded as UTF-8 (a lone surrogate as the bytes it would be)."""
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


content_types = s.mostly(
    st.sampled_from(["application/json", "application/json; charset=utf-8"]),
    st.one_of(
        st.sampled_from(["application/cloudevents+json", "text/plain", "", "application/JSON"]),
        s.header_text,
        st.none(),
    ),
)


def test_sendinfo_never_answers_5xx_and_what_it_accepts_renders(
    receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    registered = receiver.register(
        provider="okdokument", signatureRequestId=SR_ID, documentId="doc-1"
    )
    hook = path_of(registered["callback_urls"]["sendinfo_url"], receiver)
    answers: Counter[int] = Counter()
    with receiver.client() as client:

        @settings(max_examples=examples(150))
        @given(
            body=s.bodies(s.sendinfo_objects(SR_ID)),
            content_type=content_types,
            query=st.one_of(st.just(""), s.query_strings().map(lambda q: "?" + q)),
            token=s.mostly(st.just(hook), s.text.map(encoded), one_in=10),
        )
        @example(
            body=b'{"signatureRequestId":"\\ud800","state":"signed"}',
            content_type="application/json",
            query="",
            token=hook,
        )
        @example(
            body=b'{"signatureRequestId":"sr-prop","state":"\\ud800"}',
            content_type="application/json",
            query="",
            token=hook,
        )
        @example(
            body=('{"signatureRequestId":"sr-prop","state":"' + "x" * 500 + '"}').encode(),
            content_type="application/json",
            query="",
            token=hook,
        )
        def post(body: bytes, content_type: str | None, query: str, token: str) -> None:
            path = token if token == hook else f"/hooks/okdokument/{token}"
            headers = {} if content_type is None else {b"content-type": latin1(content_type)}
            response = client.post(path + query, content=body, headers=headers)
            assert response.status_code in {200, 400, 404, 405, 409, 413, 415}, response.text
            strict_json(response)
            answers[response.status_code] += 1

        post()
    assert answers[200] > 0, answers  # the generated bodies reached the store
    assert_everything_renders(receiver)
    assert_nothing_unhandled(capsys)


def test_firma_webhooks_never_answer_5xx_and_what_they_store_renders(
    receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver.register(provider="firma", signatureRequestId=FIRMA_ID)
    answers: Counter[int] = Counter()
    with receiver.client() as client:

        @settings(max_examples=examples(150))
        @given(
            data=st.data(),
            body=s.bodies(s.firma_objects(FIRMA_ID)),
            content_type=content_types,
            workspace=s.mostly(st.none(), s.text.map(encoded), one_in=10),
        )
        @example(
            data=None,
            body=b'{"id":"e-1e15","type":"signing_request.sent","created_at":1e15,'
            b'"data":{"signing_request":{"id":"fsr-prop"}}}',
            content_type="application/json",
            workspace=None,
        )
        @example(
            data=None,
            body=b'{"id":"e-70","type":"signing_request.sent","created_at":'
            + b"9" * 70
            + b',"data":{"signing_request":{"id":"fsr-prop"}}}',
            content_type="application/json",
            workspace=None,
        )
        @example(
            data=None,
            body=('{"id":"' + "e" * 200 + '","type":"signing_request.sent"}').encode(),
            content_type="application/json",
            workspace=None,
        )
        def post(
            data: st.DataObject | None,
            body: bytes,
            content_type: str | None,
            workspace: str | None,
        ) -> None:
            now = int(time.time())
            header = (
                signature.sign(FIRMA_SECRET, body, now)
                if data is None
                else data.draw(s.signature_headers(body, FIRMA_SECRET, now))
            )
            path = "/hooks/firma" if workspace is None else f"/hooks/firma/{workspace}"
            headers = {b"x-firma-signature": latin1(header)}
            if content_type is not None:
                headers[b"content-type"] = latin1(content_type)
            response = client.post(path, content=body, headers=headers)
            assert response.status_code in {200, 400, 401, 404, 405, 413, 415}, response.text
            strict_json(response)
            answers[response.status_code] += 1

        post()
    assert answers[200] > 0, answers
    assert_everything_renders(receiver)
    assert_nothing_unhandled(capsys)


def test_browser_returns_never_answer_5xx_and_what_they_store_renders(
    receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    with_urls = receiver.register(
        provider="okdokument",
        signatureRequestId=SR_ID,
        documentId="doc-1",
        return_url="https://shop.example/thanks",
        retry_url="https://shop.example/retry",
    )
    without = receiver.register(provider="firma", signatureRequestId=FIRMA_ID)
    pages = [path_of(r["callback_urls"]["return_url"], receiver) for r in (with_urls, without)]
    with receiver.client() as client:

        @settings(max_examples=examples(150))
        @given(page=st.sampled_from(pages), query=s.query_strings())
        @example(page=pages[0], query="ts=999999999999999&result=success")
        @example(page=pages[1], query="ts=999999999999999&result=close")
        def visit(page: str, query: str) -> None:
            response = client.get(f"{page}?{query}")
            assert response.status_code in {200, 303}, response.text
            if response.status_code == 200:
                assert response.headers["content-type"].startswith("text/html")

        visit()
    assert_everything_renders(receiver)
    assert_nothing_unhandled(capsys)


def test_the_admin_api_never_answers_5xx_and_what_it_stores_renders(
    receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    answers: Counter[int] = Counter()
    with receiver.admin() as admin:

        @settings(max_examples=examples(150))
        @given(
            body=st.one_of(
                s.json_bytes(s.registration_objects),
                s.json_bytes(s.registration_objects),
                s.bodies(s.registration_objects),
            ),
        )
        @example(body=b'{"provider":"okdokument","signatureRequestId":"a\\u0000b"}')
        @example(body=b'{"provider":"okdokument","signatureRequestId":"x","metadata":{"a":NaN}}')
        @example(body=s.nested(100_000))
        def register(body: bytes) -> None:
            response = admin.post(
                "/api/requests", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code in {201, 400, 409, 413, 422}, response.text
            strict_json(response)
            answers[response.status_code] += 1

        @settings(max_examples=examples(150))
        @given(
            route=st.sampled_from(
                [
                    ("GET", "/api/requests/{}"),
                    ("GET", "/api/requests/{}/documents"),
                    ("GET", "/api/requests/{}/documents/signed.pdf"),
                    ("POST", "/api/outbox/{}/retry"),
                    ("POST", "/api/inbox/{}/retry"),
                    ("GET", "/api/endpoints/{}"),
                    ("PATCH", "/api/endpoints/{}"),
                    ("DELETE", "/api/endpoints/{}"),
                    ("POST", "/api/endpoints/{}/replay"),
                    ("GET", "/api/endpoints/{}/deliveries"),
                ]
            ),
            raw_id=s.path_ids,
        )
        @example(route=("GET", "/api/requests/{}"), raw_id="9223372036854775808")
        @example(route=("POST", "/api/outbox/{}/retry"), raw_id="9223372036854775808")
        @example(route=("POST", "/api/inbox/{}/retry"), raw_id="9" * 5000)
        def by_id(route: tuple[str, str], raw_id: str) -> None:
            method, template = route
            response = admin.request(method, template.format(encoded(raw_id)))
            # No redirect (a trailing "/" decoded from %2F used to get a 307 built from the
            # Host header): an id that is no id is a 404 like any other.
            assert response.status_code in {200, 404, 405, 409, 422}, response.text
            strict_json(response)

        filters = {
            "/api/requests": ("state", "provider", "reference", "before_id", "limit"),
            "/api/outbox": ("status", "limit"),
            "/api/inbox": ("status", "provider", "limit"),
            "/api/events": ("type", "request_id", "after_id", "limit"),
        }

        @settings(max_examples=examples(150))
        @given(
            data=st.data(),
            path=st.sampled_from(sorted(filters)),
        )
        @example(data=None, path="/api/requests")
        def listing(data: st.DataObject | None, path: str) -> None:
            if data is None:  # the issue's own examples
                query = "before_id=99999999999999999999999&reference=a%00b"
            else:
                names = st.sampled_from([*filters[path], "other"])
                chosen = data.draw(st.dictionaries(names, s.filter_values, max_size=4))
                query = "&".join(f"{encoded(k)}={encoded(v)}" for k, v in chosen.items())
            response = admin.get(f"{path}?{query}")
            assert response.status_code in {200, 422}, response.text
            strict_json(response)

        register()
        by_id()
        listing()
    assert answers[201] > 0, answers  # the generated bodies reached the store
    assert_everything_renders(receiver)
    assert_nothing_unhandled(capsys)


# Endpoint bodies: mostly the fields the routes take, with values right or wrong; URLs from
# a fixed set (a generated host name would be looked up in DNS at creation).
ENDPOINT_URLS = st.sampled_from(
    [
        "http://127.0.0.1:9/hook",
        "https://203.0.113.5/hook",
        "http://localhost/x",
        "ftp://example.invalid/",
        "http://user:pw@127.0.0.1/",
        "http://127.0.0.1/#frag",
        "",
        "http://[::1]:9/",
        "http://127.0.0.1:99999/",
    ]
)
endpoint_objects = st.fixed_dictionaries(
    {},
    optional={
        "url": st.one_of(ENDPOINT_URLS, s.text, s.json_values),
        "description": st.one_of(s.text, s.json_values),
        "kinds": st.one_of(
            st.lists(st.sampled_from(["signature_request.*", "signature_request.completed"])),
            s.json_values,
        ),
        "providers": st.one_of(st.lists(st.sampled_from(["firma", "okdokument"])), s.json_values),
        "include_raw": st.one_of(st.booleans(), s.json_values),
        "status": st.one_of(st.sampled_from(["enabled", "disabled"]), s.text),
        "since": st.one_of(s.timestamps, s.json_values),
        "until": st.one_of(s.timestamps, s.json_values),
        "request_id": st.one_of(s.numbers, s.text),
        "other": s.json_values,
    },
)


@pytest.fixture
def loopback_endpoints(make_settings: Callable[..., Settings]) -> Iterator[Receiver]:
    """The receiver, with endpoints on loopback allowed (so that creating one can succeed)."""
    with running_receiver(
        make_settings,
        okdokument_base_url="http://127.0.0.1:9",
        firma_base_url="http://127.0.0.1:9/functions/v1/signing-request-api",
        outbox_max_attempts=2,
        endpoint_allow_private=True,
    ) as served:
        yield served


def test_the_endpoint_routes_never_answer_5xx(
    loopback_endpoints: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bodies for every endpoint route that takes one (create, change, replay), and the
    routes that take none, against an endpoint that exists and ids that do not."""
    with loopback_endpoints.admin() as admin:
        created = admin.post(
            "/api/endpoints", json={"url": "http://127.0.0.1:9/hook", "description": "prop"}
        )
        assert created.status_code == 201, created.text
        known = strict_json(created)["id"]

        @settings(max_examples=examples(150))
        @given(
            route=st.sampled_from(
                [
                    ("POST", "/api/endpoints"),
                    ("PATCH", "/api/endpoints/{}"),
                    ("POST", "/api/endpoints/{}/replay"),
                    ("POST", "/api/endpoints/{}/test"),
                    ("POST", "/api/endpoints/{}/rotate-secret"),
                    ("POST", "/api/endpoints/{}/retry-dead"),
                    ("GET", "/api/endpoints/{}/deliveries"),
                ]
            ),
            which=st.sampled_from(["known", "unknown"]),
            body=s.bodies(endpoint_objects),
        )
        def call(route: tuple[str, str], which: str, body: bytes) -> None:
            method, template = route
            endpoint_id = known if which == "known" else 987_654_321
            response = admin.request(
                method,
                template.format(endpoint_id),
                content=body,
                headers={"content-type": "application/json"},
            )
            assert response.status_code in {200, 201, 202, 400, 404, 409, 413, 422}, (
                route,
                response.text,
            )
            strict_json(response)

        call()
        assert admin.get("/api/endpoints").status_code == 200
        assert admin.get(f"/api/endpoints/{known}").status_code in (200, 404)
    assert_nothing_unhandled(capsys)
