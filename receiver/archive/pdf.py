"""A small valid PDF, generated in code: what the emulators serve as signed documents.

One page of Helvetica text, with a correct cross-reference table, so that a PDF reader
opens it and the archive's checks (``%PDF-`` magic, size, checksum) see a real file. No
dependency: a PDF of this kind is a few hundred bytes of plain text.
"""

from __future__ import annotations

from collections.abc import Sequence

PDF_MAGIC = b"%PDF-"


def _escape(text: str) -> str:
    ascii_text = text.encode("ascii", "replace").decode("ascii")
    return ascii_text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(lines: Sequence[str], *, padding: int = 0) -> bytes:
    """A one-page PDF showing ``lines``; ``padding`` adds that many bytes in a comment
    stream object (a larger file, for streaming tests), still a valid PDF."""
    text = "\n".join(
        f"BT /F1 12 Tf 72 {770 - 18 * i} Td ({_escape(line)}) Tj ET" for i, line in enumerate(lines)
    ).encode("ascii")
    filler = b"%" + b"x" * max(0, padding - 2) + b"\n" if padding > 1 else b""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842]"
        b" /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(text) + text + b"\nendstream",
        b"<< /Length %d >>\nstream\n" % len(filler) + filler + b"endstream",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)
