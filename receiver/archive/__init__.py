"""The document archive: a completed request's signed PDF and the provider's evidence, kept.

Provider-neutral. A provider says, through its ``Provider.documents``
(:class:`receiver.providers.contract.DocumentSource`), which files a completed request has
and how to stream each one (taking its rate-budget slots, refreshing expired links, saying
"not yet" while the PDF is generated). The rest is here:

- ``trigger.py``: on a confirmed completion the pipeline queues one ``signback.archive``
  action (key ``archive``: once per request);
- ``step.py``: that action streams each file to the spool (``spool.py``: bounded buffer,
  SHA-256, size, the ``%PDF-`` check), puts it in the storage atomically (``storage.py``:
  a local directory or an S3-compatible bucket), then records it (``documents`` table) and
  emits ``signature_request.document_archived`` in one transaction; once every file is
  in, the provider's follow-up actions (deleting its copy, when configured) are queued;
- ``links.py``: short-lived signed download links; ``access.py``: the API's document
  routes and the link route; ``retention.py``: purging old files and old callback bodies.

docs/archive.md describes it for operators.
"""

from __future__ import annotations

ARCHIVE_OPERATION = "signback.archive"
ARCHIVE_KEY = "archive"  # one archive action per request
