"""Reading the figures a portal page shows: a small tree of its HTML (the standard library's parser,
no dependency) with lookups by id, tag and attribute, and the text of an element as shown."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

from billing.meters import TIERS
from tenants.labels import bytes_label

TOTAL = "total"

# HTML's void elements; SVG shapes are closed explicitly (``<circle/>`` or ``<circle><title>``).
VOID = frozenset(
    ["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param"]
    + ["source", "track", "wbr"]
)


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    def iter(self) -> Iterator[Element]:
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def find_all(
        self, tag: str | None = None, match: Callable[[Element], bool] | None = None, **attrs: str
    ) -> list[Element]:
        """Descendants (and self) with ``tag`` and every attribute in ``attrs`` (``class_`` for
        ``class``: one of the element's classes), and for which ``match`` holds."""
        out = []
        for el in self.iter():
            if tag is not None and el.tag != tag:
                continue
            if not all(_has(el, name, value) for name, value in attrs.items()):
                continue
            if match is not None and not match(el):
                continue
            out.append(el)
        return out

    def find(self, tag: str | None = None, **attrs: str) -> Element:
        found = self.find_all(tag, None, **attrs)
        assert found, f"no <{tag or '*'}> with {attrs} in <{self.tag} {self.attrs}>"
        return found[0]

    def by_id(self, element_id: str) -> Element:
        return self.find(id=element_id)

    @property
    def text(self) -> str:
        """The element's text as a reader sees it: whitespace collapsed, ``<title>`` tooltips of
        SVG shapes left out."""
        return " ".join(self._text().split())

    def _text(self) -> str:
        if self.tag == "title":
            return ""
        return "".join(c if isinstance(c, str) else f" {c._text()} " for c in self.children)

    @property
    def own_title(self) -> str:
        """The ``<title>`` tooltip of an SVG shape."""
        for child in self.children:
            if isinstance(child, Element) and child.tag == "title":
                return " ".join("".join(c for c in child.children if isinstance(c, str)).split())
        return ""


def _has(el: Element, name: str, value: str) -> bool:
    if name == "class_":
        return value in el.attrs.get("class", "").split()
    return el.attrs.get(name.replace("_", "-")) == value


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(el)
        if tag not in VOID:
            self.stack.append(el)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def page(html: str | bytes) -> Element:
    builder = _Builder()
    builder.feed(html.decode() if isinstance(html, bytes) else html)
    builder.close()
    return builder.root


def after(text: str, label: str = "") -> str:
    """What follows ``label`` in ``text`` (all of it without one) up to the next ``·`` or the
    end: ``after("Spent so far: 57.04 USD", "Spent so far:")`` is ``"57.04 USD"``."""
    assert label in text, (label, text)
    rest = text.split(label, 1)[1] if label else text
    return rest.split("·", 1)[0].strip()


def tier_figures(text: str) -> dict[str, str]:
    """``"Hot 1 TiB · Warm 1.8 TiB"`` -> ``{"hot": "1 TiB", "warm": "1.8 TiB"}``."""
    out = {}
    for part in text.split("·"):
        match = re.fullmatch(r"\s*(Hot|Warm|Cold|Archive)\s+(.+?)\s*", part)
        if match:
            out[match.group(1).lower()] = match.group(2)
    return out


def chart_table(chart: Element) -> tuple[list[str], list[list[str]]]:
    """A chart's data table (``tenants.charts.data_table``): the column headers after the first
    and each row's cells (its label first)."""
    table = chart.find("table")
    head = [th.text for th in table.find("thead").find_all("th")][1:]
    rows = [
        [cell.text for cell in tr.children if isinstance(cell, Element)]
        for tr in table.find("tbody").find_all("tr")
    ]
    return head, rows


def definition(dl: Element, term: str) -> str:
    """The ``<dd>`` after the ``<dt>`` reading ``term`` in a definition list."""
    items = [el for el in dl.iter() if el.tag in ("dt", "dd")]
    for dt, dd in zip(items, items[1:], strict=False):
        if dt.tag == "dt" and dt.text == term and dd.tag == "dd":
            return dd.text
    raise AssertionError(f"no <dt>{term}</dt> in {[el.text for el in items if el.tag == 'dt']}")


def chart_last_point(chart: Element) -> dict[str, str]:
    """The last day of a stored-bytes chart (``billing.views.storage_chart``), per tier (``0 B``
    for a tier it leaves out, having nothing in it) and in total (its sum column, or the one
    tier's value)."""
    head, rows = chart_table(chart)
    last = dict(zip(head, rows[-1][1:], strict=True))
    out = {t: last.get(t.capitalize(), bytes_label(0)) for t in TIERS}
    out[TOTAL] = last.get("Total") or next(iter(last.values()))
    return out


def form_fields(form: Element) -> dict[str, str]:
    """What a browser submits of ``form`` without a button: text and hidden inputs, checked
    boxes, each select's chosen option and each textarea's text."""
    fields: dict[str, str] = {}
    for el in form.iter():
        name = el.attrs.get("name")
        if not name:
            continue
        if el.tag == "input":
            kind = el.attrs.get("type", "text")
            if kind in ("submit", "button", "image", "reset", "file"):
                continue
            if kind in ("checkbox", "radio") and "checked" not in el.attrs:
                continue
            fields[name] = el.attrs.get("value", "on" if kind == "checkbox" else "")
        elif el.tag == "select":
            options = el.find_all("option")
            chosen = [o for o in options if "selected" in o.attrs] or options[:1]
            fields[name] = chosen[0].attrs.get("value", chosen[0].text) if chosen else ""
        elif el.tag == "textarea":
            fields[name] = "".join(c for c in el.children if isinstance(c, str)).strip("\n")
    return fields
