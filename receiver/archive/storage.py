"""Where archived files go: a local directory, or an S3-compatible bucket.

Both take a file already spooled and synced (receiver/archive/spool.py) and make it
appear under its final key whole or not at all:

- :class:`LocalStorage` renames the spooled file (spooled in ``<dir>/.spool/``, the same
  file system) to its key and syncs the directory, so a crash leaves either no file or the
  whole file at the key;
- :class:`S3Storage` uploads it with boto3 (a multipart upload for large files, which S3
  makes visible only when complete) and removes the spooled copy. boto3 is synchronous:
  every call runs in a thread, never on the event loop.

A key holds the content's SHA-256 (``<provider>/<request id>/<sha256>-<name>``), so one
object is one version of one document: writing it again writes the same bytes, and a new
version never overwrites an old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from receiver.archive.spool import Spooled
from receiver.errors import ConfigurationError
from receiver.settings import Settings

CHUNK_BYTES = 64 * 1024


def object_key(provider: str, request_id: int, sha256: str, name: str) -> str:
    return f"{provider}/{request_id}/{sha256}-{name}"


class Storage(Protocol):
    @property
    def description(self) -> str: ...  # for log lines: never a credential

    @property
    def spool_dir(self) -> Path: ...  # where downloads are written before put()

    async def put(self, spooled: Spooled, key: str, *, media_type: str) -> None: ...

    def read(self, key: str) -> AsyncIterator[bytes]: ...  # FileNotFoundError if absent

    async def delete(self, key: str) -> None: ...  # absent already: fine


def _safe_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not an archive key: {key!r}")
    return key


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    @property
    def description(self) -> str:
        return f"directory {self.root}"

    @property
    def spool_dir(self) -> Path:
        return self.root / ".spool"

    def path_of(self, key: str) -> Path:
        return self.root / _safe_key(key)

    async def put(self, spooled: Spooled, key: str, *, media_type: str) -> None:
        target = self.path_of(key)

        def move() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(spooled.path, target)  # atomic on one file system
            directory = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)  # the rename itself survives a power cut
            finally:
                os.close(directory)

        await asyncio.to_thread(move)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(self.path_of(key).open, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                yield chunk
        finally:
            handle.close()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path_of(key).unlink, missing_ok=True)


class S3Storage:
    """``s3://bucket/prefix``; the endpoint, region and credentials come from boto3's usual
    sources (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
    ``AWS_DEFAULT_REGION``, a profile, an instance role)."""

    def __init__(self, url: str, spool_dir: Path, *, client: Any = None) -> None:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._spool_dir = spool_dir
        self._client = client
        if client is None:
            import boto3  # noqa: F401  # only when an s3:// archive is configured: fail early

    async def _s3(self) -> Any:
        """The boto3 client, made on first use in a thread (reading boto3's service models
        takes a while: not on the event loop). Thread-safe once made."""
        if self._client is None:
            import boto3

            self._client = await asyncio.to_thread(boto3.client, "s3")
        return self._client

    @property
    def description(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def spool_dir(self) -> Path:
        return self._spool_dir

    async def put(self, spooled: Spooled, key: str, *, media_type: str) -> None:
        s3 = await self._s3()
        try:
            await asyncio.to_thread(
                s3.upload_file,
                str(spooled.path),
                self.bucket,
                self.prefix + _safe_key(key),
                ExtraArgs={"ContentType": media_type, "Metadata": {"sha256": spooled.sha256}},
            )
        finally:
            with contextlib.suppress(OSError):
                spooled.path.unlink()

    async def read(self, key: str) -> AsyncIterator[bytes]:
        from botocore.exceptions import ClientError

        s3 = await self._s3()
        try:
            answer = await asyncio.to_thread(
                s3.get_object, Bucket=self.bucket, Key=self.prefix + _safe_key(key)
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(key) from None
            raise
        body = answer["Body"]
        try:
            while chunk := await asyncio.to_thread(body.read, CHUNK_BYTES):
                yield chunk
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        s3 = await self._s3()
        await asyncio.to_thread(
            s3.delete_object, Bucket=self.bucket, Key=self.prefix + _safe_key(key)
        )


def default_dir(settings: Settings) -> Path:
    """``archive`` next to the SQLite file; with PostgreSQL (or SQLite in memory),
    ``./archive`` under the working directory."""
    if settings.is_sqlite:
        from receiver.store.db.sqlite import sqlite_path

        path = sqlite_path(settings.database_url)
        if path != ":memory:":
            return Path(path).resolve().parent / "archive"
    return Path("archive").resolve()


def storage_from_settings(settings: Settings) -> Storage:
    if settings.archive_url:
        spool = Path(settings.archive_dir) if settings.archive_dir else default_dir(settings)
        try:
            return S3Storage(settings.archive_url, spool / ".spool")
        except ImportError:
            raise ConfigurationError(
                "SIGNBACK_ARCHIVE_URL is an s3:// URL but boto3 is not installed"
            ) from None
    root = Path(settings.archive_dir) if settings.archive_dir else default_dir(settings)
    return LocalStorage(root)
