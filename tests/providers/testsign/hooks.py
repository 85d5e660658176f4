"""``POST /hooks/testsign``: signed, form-encoded callbacks, acknowledged in plain text."""

from __future__ import annotations

from receiver.context import AppContext
from receiver.intake.router import Callback
from receiver.providers.contract import Accepted, Ack, HookSpec, MediaTypes, SecretHeader
from tests.providers.testsign import signature
from tests.providers.testsign.events import parse_form
from tests.providers.testsign.settings import TestsignSettings

# Testsign retries any answer but this exact one.
ACK = Ack.text("Hello API Event Received")
FORM = MediaTypes(("application/x-www-form-urlencoded",))
SECRET_HEADERS = (SecretHeader(signature.SIGNATURE_PATTERN),)


def hooks(settings: TestsignSettings, ctx: AppContext) -> tuple[HookSpec, ...]:
    secrets = [s.get_secret_value() for s in settings.secrets]
    tolerance = settings.tolerance_seconds
    clock = ctx.clock

    def verify(call: Callback, body: bytes, _: None) -> Accepted:
        signature.verify(call.headers, body, secrets, now=clock(), tolerance=tolerance)
        fields = parse_form(body)
        return Accepted(
            dedupe_key="event:" + fields["event_id"],
            external_id=fields["envelope_id"],
            log_facts={"event_id": fields["event_id"], "status": fields["status"]},
        )

    return (
        HookSpec("/hooks/testsign", channel="webhook", verify=verify, media_types=FORM, ack=ACK),
    )
