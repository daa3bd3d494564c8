"""Sample documents built in the test run: nothing is fetched, nothing binary is checked in."""
from __future__ import annotations

import io

import docx
import pypdf


def pdf_with_text(*pages: list[str], title: str = "") -> bytes:
    """A minimal PDF whose pages each show `lines` in Helvetica: a real text layer pypdf reads back."""
    count = len(pages)
    # Objects: 1 catalog, 2 page tree, 3 font, 4 info, then a page and its content stream per page.
    page_ids = [5 + 2 * index for index in range(count)]
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % pid for pid in page_ids) + b"] /Count %d >>" % count,
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        4: b"<< /Title (" + title.encode("latin-1") + b") >>",
    }
    for page_id, lines in zip(page_ids, pages, strict=True):
        shown = b" 0 -16 Td ".join(b"(" + line.encode("latin-1") + b") Tj" for line in lines)
        stream = b"BT /F1 12 Tf 72 720 Td " + shown + b" ET"
        objects[page_id] = (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
                            b"/Resources << /Font << /F1 3 0 R >> >> >>" % (page_id + 1))
        objects[page_id + 1] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    body = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(body)
        body += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref = len(body)
    size = max(objects) + 1
    body += b"xref\n0 %d\n0000000000 65535 f \n" % size
    body += b"".join(b"%010d 00000 n \n" % offsets[number] for number in range(1, size))
    body += b"trailer\n<< /Size %d /Root 1 0 R /Info 4 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    return bytes(body)


def blank_pdf() -> bytes:
    writer = pypdf.PdfWriter()
    writer.add_blank_page(width=612, height=792)
    return written(writer)


def encrypted_pdf(user_password: str) -> bytes:
    """A PDF with a text layer, encrypted; an empty `user_password` opens for anyone."""
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(pdf_with_text(["Members only"]))))
    writer.encrypt(user_password=user_password, owner_password="owner-secret")
    return written(writer)


def written(writer: pypdf.PdfWriter) -> bytes:
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def word_document(title: str = "") -> bytes:
    document = docx.Document()
    document.core_properties.title = title
    document.add_heading("Cafe Rosa", level=0)
    document.add_paragraph("A small cafe by the harbour.")
    document.add_heading("Opening hours", level=1)
    document.add_paragraph("Weekdays from eight.")
    document.add_paragraph("Closed on Sundays", style="List Bullet")
    document.add_heading("Prices", level=2)
    table = document.add_table(rows=2, cols=2)
    for row, cells in zip(table.rows, [("Tea", "2 EUR"), ("Cake", "4 EUR")], strict=True):
        row.cells[0].text, row.cells[1].text = cells
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()
