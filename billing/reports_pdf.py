"""Invoices and usage reports as PDF (reportlab), for ``billing.reports.invoice_pdf`` and
``usage_report_pdf``: imported when a process makes its first PDF, because reportlab is large
and most processes never make one. The documents' content and wording come from
``billing.reports``; this module only lays them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from decimal import Decimal
from io import BytesIO
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    Flowable,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from billing.reports import (
    COST_NOTE,
    ISSUER,
    QUANTITY_NOTE,
    ROUNDING_NOTE,
    STORAGE_NOTE,
    InvoiceDocument,
    UsageReport,
    amount_of_unit,
    day_label,
    invoice_columns,
    line_figures,
    period_label,
)
from tenants.labels import money_label
from tenants.models import Organization

_STYLES = getSampleStyleSheet()
_BODY = ParagraphStyle("StrataBody", parent=_STYLES["BodyText"], fontSize=9, leading=11)
_SMALL = ParagraphStyle("StrataSmall", parent=_BODY, fontSize=8, leading=10)
_RIGHT = ParagraphStyle("StrataRight", parent=_BODY, alignment=TA_RIGHT)
_TITLE = ParagraphStyle("StrataTitle", parent=_STYLES["Title"], alignment=0, fontSize=18)
_HEAD = ParagraphStyle("StrataHead", parent=_BODY, fontName="Helvetica-Bold")
_HEAD_RIGHT = ParagraphStyle("StrataHeadRight", parent=_HEAD, alignment=TA_RIGHT)
_H2 = ParagraphStyle("StrataH2", parent=_STYLES["Heading2"], fontSize=11, spaceBefore=8)
_GRID = TableStyle(
    [
        ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 9),
        ("FONT", (0, 1), (-1, -1), "Helvetica", 9),
        ("LINEBELOW", (0, 0), (-1, 0), 0.75, colors.black),
        ("LINEBELOW", (0, 1), (-1, -1), 0.25, colors.lightgrey),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]
)


def _p(text: str, style: ParagraphStyle = _BODY) -> Paragraph:
    # Paragraph text is markup: names and reasons typed by people must be escaped.
    return Paragraph(escape(text), style)


def _key_values(rows: Sequence[tuple[str, str]]) -> Table:
    table = Table(
        [[_p(k, _SMALL), _p(v)] for k, v in rows], colWidths=[40 * mm, 130 * mm], hAlign="LEFT"
    )
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("TOPPADDING", (0, 0), (-1, -1), 1),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 1),
                ("TEXTCOLOR", (0, 0), (0, -1), colors.grey),
            ]
        )
    )
    return table


def _page_decorator(
    *, footer: Sequence[str], watermark: str | None
) -> Any:  # reportlab's onPage callback: (canvas, doc) -> None
    def decorate(canvas: Canvas, doc: SimpleDocTemplate) -> None:
        canvas.saveState()
        if watermark:
            canvas.setFont("Helvetica-Bold", 96)
            canvas.setFillColor(colors.Color(0.8, 0.1, 0.1, alpha=0.18))
            canvas.translate(A4[0] / 2, A4[1] / 2)
            canvas.rotate(45)
            canvas.drawCentredString(0, 0, watermark)
            canvas.rotate(-45)
            canvas.translate(-A4[0] / 2, -A4[1] / 2)
        canvas.setFont("Helvetica", 7)
        canvas.setFillColor(colors.grey)
        lines = [*footer, f"Page {doc.page}"]
        # The last line 8 mm above the page's edge, however many lines there are.
        y = 8 * mm + 3.2 * mm * (len(lines) - 1)
        for text in lines:
            canvas.drawString(doc.leftMargin, y, text)
            y -= 3.2 * mm
        canvas.restoreState()

    return decorate


def _build(
    story: list[Flowable], *, title: str, footer: Sequence[str], watermark: str | None
) -> bytes:
    buffer = BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=20 * mm,
        rightMargin=20 * mm,
        topMargin=18 * mm,
        bottomMargin=28 * mm,
        title=title,
        author=ISSUER,
        creator=ISSUER,
    )
    decorate = _page_decorator(footer=footer, watermark=watermark)
    doc.build(story, onFirstPage=decorate, onLaterPages=decorate)
    return buffer.getvalue()


def _party_block(org: Organization, *, label: str) -> Table:
    left = [
        _p("From", _SMALL),
        Paragraph(f"<b>{escape(ISSUER)}</b>", _BODY),
        _p("Medical image archive", _SMALL),
    ]
    right = [
        _p(label, _SMALL),
        Paragraph(f"<b>{escape(org.name)}</b>", _BODY),
        _p(f"Organization: {org.slug}", _SMALL),
    ]
    table = Table([[left, right]], colWidths=[85 * mm, 85 * mm], hAlign="LEFT")
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    return table


def invoice_pdf(doc: InvoiceDocument) -> bytes:
    """A filing-grade invoice (or clearly marked draft) as PDF bytes; documents are small."""
    if doc.is_draft:
        title, number = "Draft invoice", "DRAFT — not a final invoice"
    elif doc.status == "void":
        title, number = "Invoice (VOID)", str(doc.number)
    else:
        title, number = "Invoice", str(doc.number)
    period = period_label(doc.period_start, doc.period_end)
    start_utc = doc.period_start.astimezone(UTC)
    end_utc = doc.period_end.astimezone(UTC)
    issued = doc.issued_at.astimezone(UTC)
    meta: list[tuple[str, str]] = [
        ("Invoice number", number),
        (
            "Billing period",
            f"{period} (UTC; from {day_label(start_utc.date())} {start_utc:%H:%M} up to, "
            f"not including, {day_label(end_utc.date())} {end_utc:%H:%M})",
        ),
        (
            "As of" if doc.is_draft else "Issue date",
            f"{day_label(issued.date())} {issued:%H:%M} UTC"
            if doc.is_draft
            else day_label(issued.date()),
        ),
        ("Currency", doc.currency),
        ("Status", doc.status.upper() if doc.status == "void" else doc.status.capitalize()),
    ]
    if doc.status == "void" and doc.voided_at is not None:
        meta.append(
            (
                "Voided",
                f"{day_label(doc.voided_at.astimezone(UTC).date())}: {doc.void_reason}",
            )
        )
    story: list[Flowable] = [
        _p(f"{ISSUER} — {title}", _TITLE),
        _party_block(doc.organization, label="Bill to"),
        Spacer(1, 4 * mm),
        _key_values(meta),
        Spacer(1, 6 * mm),
    ]
    if doc.is_draft:
        story.append(
            _p(
                "This draft shows usage recorded so far this month. It is not a request for "
                "payment; the final invoice is issued after the month ends.",
                _SMALL,
            )
        )
        story.append(Spacer(1, 3 * mm))
    rows: list[list[Any]] = [
        [
            _p(title, _HEAD_RIGHT if i in (2, 5) else _HEAD)
            for i, title in enumerate(invoice_columns(doc.currency))
        ]
    ]
    for ln in doc.lines:
        figures = line_figures(ln)
        rows.append(
            [
                str(ln.position),
                _p(ln.description),
                _p(figures.quantity, _RIGHT),
                _p(figures.unit),
                Paragraph("<br/>".join(escape(t) for t in figures.unit_price), _SMALL),
                money_label(ln.amount),
            ]
        )
    if not doc.lines:
        rows.append(
            ["", _p("No billable usage in this period."), "", "", "", money_label(Decimal(0))]
        )
    lines_table = Table(
        rows,
        colWidths=[8 * mm, 44 * mm, 22 * mm, 20 * mm, 50 * mm, 26 * mm],
        repeatRows=1,
        hAlign="LEFT",
    )
    lines_table.setStyle(_GRID)
    lines_table.setStyle(TableStyle([("ALIGN", (5, 0), (5, -1), "RIGHT")]))
    story.append(lines_table)
    story.append(Spacer(1, 4 * mm))
    totals = [
        ["Subtotal (usage)", money_label(doc.subtotal)],
        ["Minimum commitment", money_label(doc.minimum_adjustment)],
        ["Adjustments", money_label(doc.adjustments)],
        [f"Total ({doc.currency})", money_label(doc.total)],
    ]
    totals_table = Table(totals, colWidths=[50 * mm, 30 * mm], hAlign="RIGHT")
    totals_table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, -1), "Helvetica", 9),
                ("FONT", (0, -1), (-1, -1), "Helvetica-Bold", 10),
                ("ALIGN", (1, 0), (1, -1), "RIGHT"),
                ("LINEABOVE", (0, -1), (-1, -1), 0.75, colors.black),
            ]
        )
    )
    story.append(KeepTogether(totals_table))
    if doc.credit_notes:
        credit_rows: list[list[Any]] = [
            ["Credit note", "Date", "Reason", f"Amount ({doc.currency})"]
        ]
        for note in doc.credit_notes:
            credit_rows.append(
                [
                    note.number,
                    day_label(note.created_at.astimezone(UTC).date()),
                    _p(note.reason),
                    money_label(note.amount),
                ]
            )
        credit_rows.append(
            ["", "", _p("Total after credit notes"), money_label(doc.total - doc.credited)]
        )
        credit_table = Table(
            credit_rows, colWidths=[36 * mm, 26 * mm, 78 * mm, 30 * mm], hAlign="LEFT"
        )
        credit_table.setStyle(_GRID)
        credit_table.setStyle(TableStyle([("ALIGN", (3, 0), (3, -1), "RIGHT")]))
        story += [_p("Credit notes", _H2), credit_table]
    ref = doc.number or "DRAFT"
    return _build(
        story,
        title=f"{ISSUER} {title} {ref} — {doc.organization.name}",
        footer=[
            f"{ISSUER} · {doc.organization.slug} · {ref} · {period}",
            ROUNDING_NOTE,
            QUANTITY_NOTE,
            STORAGE_NOTE,
        ],
        watermark="VOID" if doc.status == "void" else "DRAFT" if doc.is_draft else None,
    )


def usage_report_pdf(report: UsageReport) -> bytes:
    """The usage report as a table (by meter, and tier/day as grouped) in PDF bytes."""
    org = report.organization
    range_label = period_label(report.start, report.end)
    by_tier = "tier" in report.group_by
    by_day = "day" in report.group_by
    story: list[Flowable] = [
        _p(f"{ISSUER} — Usage report", _TITLE),
        _party_block(org, label="Organization"),
        Spacer(1, 4 * mm),
        _key_values(
            [
                ("Range", f"{range_label} (UTC; hours starting in [start, end))"),
                ("Grouped by", ", ".join(report.group_by)),
                (
                    "Generated",
                    f"{day_label(report.generated_at.date())} {report.generated_at:%H:%M} UTC",
                ),
            ]
        ),
        Spacer(1, 6 * mm),
    ]
    header = [
        *(["Day"] if by_day else []),
        "Meter",
        *(["Tier"] if by_tier else []),
        "Quantity",
        "Base quantity",
        f"Cost ({report.currency})",
    ]
    rows: list[list[Any]] = [header]
    for row in report.rows:
        rows.append(
            [
                *([day_label(row.day) if row.day else ""] if by_day else []),
                _p(row.label),
                *([row.tier or "—"] if by_tier else []),
                _p(amount_of_unit(row.quantity, row.unit), _RIGHT),
                _p(f"{row.base_quantity:,} {row.base_unit}", _RIGHT),
                money_label(row.cost),
            ]
        )
    if not report.rows:
        rows.append([""] * (len(header) - 2) + ["No usage in this range.", ""])
    else:
        rows.append(["Total", *[""] * (len(header) - 2), money_label(report.total_cost)])
    fixed = (22 * mm if by_day else 0) + (16 * mm if by_tier else 0) + 22 * mm
    free = 170 * mm - fixed
    widths = [
        *([22 * mm] if by_day else []),
        free * 0.28,
        *([16 * mm] if by_tier else []),
        free * 0.32,
        free * 0.4,
        22 * mm,
    ]
    table = Table(rows, colWidths=widths, repeatRows=1, hAlign="LEFT")
    table.setStyle(_GRID)
    table.setStyle(
        TableStyle(
            [
                ("ALIGN", (-3, 0), (-1, 0), "RIGHT"),
                ("ALIGN", (-1, 0), (-1, -1), "RIGHT"),
                ("FONT", (0, -1), (-1, -1), "Helvetica-Bold", 9),
            ]
            if report.rows
            else [("ALIGN", (-3, 0), (-1, 0), "RIGHT")]
        )
    )
    story += [
        table,
        Spacer(1, 8 * mm),
        _p(
            "Quantities are derived exactly from the integer base quantities and shown to 9 "
            f"decimal places. Usage of a meter is never added to another meter's. {COST_NOTE}",
            _SMALL,
        ),
    ]
    return _build(
        story,
        title=f"{ISSUER} usage report — {org.name}",
        footer=[f"{ISSUER} · {org.slug} · usage {range_label}", STORAGE_NOTE],
        watermark=None,
    )
