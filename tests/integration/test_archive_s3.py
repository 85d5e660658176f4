"""The archive in an S3-compatible bucket: a real S3 server on loopback (moto's server
mode, started here), boto3 configured by the usual AWS_* variables (AWS_ENDPOINT_URL among
them). A completed Firma request's files land in the bucket under the prefix, whole, with
the checksum the API lists, and stream back through the API and the signed link."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from handlers.firma.fake import API_BASE_PATH
from receiver.settings import Settings
from tests.harness import running_firma, running_receiver
from tests.integration.test_archive_flow import Stack, client

BUCKET = "signed-documents"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for name, value in {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "signback-test",
            "AWS_SECRET_ACCESS_KEY": "signback-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "HTTP_PROXY", "HTTPS_PROXY"):
            monkeypatch.delenv(name, raising=False)
        bucket_client = boto3.client("s3")
        bucket_client.create_bucket(Bucket=BUCKET)
        yield bucket_client
    finally:
        server.stop()


@pytest.fixture
def stack(
    s3: Any, make_sqlite_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[Stack]:
    with (
        running_firma() as (firma_url, fake),
        running_receiver(
            make_sqlite_settings,
            firma_base_url=firma_url + API_BASE_PATH,
            firma_webhook_secrets=["firma-test-secret"],
            archive_enabled=True,
            archive_url=f"s3://{BUCKET}/archive/prod",
            archive_dir=str(tmp_path / "spool"),
        ) as receiver,
    ):
        built = Stack(receiver, firma_url, fake)
        try:
            yield built
        finally:
            built.close()


def test_archive_to_an_s3_bucket(stack: Stack, s3: Any, tmp_path: Path) -> None:
    stack.control.post("/downloads", json={"padding": 300_000})  # a multi-chunk PDF
    request_id, sr_id = stack.completed_request()
    items = {d["name"]: d for d in stack.documents(request_id, 2)}
    pdf = stack.fake.final_documents[sr_id]
    signed = items["signed.pdf"]
    assert signed["sha256"] == hashlib.sha256(pdf).hexdigest()
    assert signed["size"] == len(pdf) > 300_000

    listed = s3.list_objects_v2(Bucket=BUCKET)["Contents"]
    keys = sorted(o["Key"] for o in listed)
    assert keys == sorted(
        f"archive/prod/firma/{request_id}/{d['sha256']}-{d['name']}" for d in items.values()
    )
    key = f"archive/prod/firma/{request_id}/{signed['sha256']}-signed.pdf"
    stored = s3.get_object(Bucket=BUCKET, Key=key)
    assert stored["Body"].read() == pdf
    assert stored["ContentType"] == "application/pdf"
    assert stored["Metadata"]["sha256"] == signed["sha256"]
    # The spool keeps nothing once uploaded.
    assert [p for p in (tmp_path / "spool").rglob("*") if p.is_file()] == []

    answer = stack.admin.get(f"/api/requests/{request_id}/documents/signed.pdf")
    assert answer.status_code == 200
    assert answer.content == pdf
    with client(stack.receiver.url) as anonymous:
        assert anonymous.get(signed["download_url"]).content == pdf
    # An object lost from the bucket is a clear 404, not a broken stream.
    s3.delete_object(Bucket=BUCKET, Key=key)
    lost = stack.admin.get(f"/api/requests/{request_id}/documents/signed.pdf")
    assert lost.status_code == 404
    assert "missing" in lost.json()["error"]
