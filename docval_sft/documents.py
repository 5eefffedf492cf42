"""Synthetic DocVAL Phase A data: rendered document images with exact answers and pixel boxes.

Each document is drawn with PIL in one of four layouts (receipt for CORD and SROIE, form for FUNSD,
invoice for DocVQA, text page for VisualMRC) and carries 2-4 questions whose answers are text spans
on the image. ``bbox_pred`` is ``ImageDraw.textbbox`` of the span with the very arguments used to
draw it, so answers and boxes are exact by construction. A document depends only on
``(seed, document number)``: output is byte-identical across runs and independent of splitting.
Used by ``docval-sft make-demo-data``, the tests and the benchmarks.
"""

from __future__ import annotations

import copy
import json
import math
import random
import string
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .format import render_target
from .records import DATASETS as _RELEASED

__all__ = ["DATASETS", "DemoPaths", "make_records", "write_bad_records", "write_demo_data"]

DATASETS = tuple(_RELEASED.values())
MIN_SIDE, MAX_SIDE = 300, 1200
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
_FONT_FILES = {"sans": "DejaVuSans.ttf", "bold": "DejaVuSans-Bold.ttf",
               "mono": "DejaVuSansMono.ttf", "mono_bold": "DejaVuSansMono-Bold.ttf"}
_GT_DATASETS = {"DocVQA", "VisualMRC"}  # the released data has answer_gt "" for the others
# Folders under the image root, as in the original layout. SROIE's nested place is deliberate:
# the original trainers only looked at SROIE/<file> and silently dropped these records.
_FOLDERS = {"CORD": "CORD", "DocVQA": "DocVQA/images", "FUNSD": "FUNSD",
            "SROIE": "SROIE/SROIE2019/train/img", "VisualMRC": "VisualMRC"}

_CORD_SHOPS = ["KOPI KENANGAN", "BAKMI GM", "SOLARIA", "HOKBEN", "J.CO DONUTS & COFFEE",
               "WARUNG SATE PAK ALI", "ROTI O", "CHATIME"]
_CORD_ITEMS = ["ES KOPI SUSU", "NASI GORENG", "MIE AYAM", "TEH MANIS", "AYAM BAKAR", "DONUT GLAZED",
               "ROTI BAKAR", "PISANG GORENG", "BAKSO KUAH", "JUS ALPUKAT", "KENTANG GORENG"]
_CORD_STREETS = ["JL. SUDIRMAN NO. 21, JAKARTA", "JL. DAGO 45, BANDUNG", "JL. PEMUDA 112, SEMARANG"]
_SROIE_SHOPS = ["SYARIKAT PERNIAGAAN GIN KEE", "MR D.I.Y. (M) SDN BHD", "AEON CO. (M) BHD",
                "99 SPEED MART S/B", "TAN WOON YANN BOOKSTORE", "UNIHAKKA INTERNATIONAL SDN BHD"]
_SROIE_ITEMS = ["PAPER A4 80G", "CABLE TIE 8IN", "MINERAL WATER 1.5L", "BREAD WHITE", "NOTEBOOK A5",
                "PEN BLUE 0.5", "GLUE STICK 21G", "BATTERY AA 4PC", "TISSUE BOX", "CLEAR TAPE"]
_SROIE_STREETS = ["NO 12, JALAN BUKIT 3, 43000 KAJANG", "LOT 5, JALAN IPOH, 51200 KL",
                  "NO 8, JALAN SS2/24, 47300 PJ"]
_COMPANIES = ["Lorillard Tobacco Co.", "R.J. Reynolds Inc.", "Acme Supply Ltd.", "Northwind Traders",
              "Globex Corporation", "Initech Systems", "Brown & Williamson", "Harbor Freight Lines"]
_FIRST = ["John", "Mary", "Robert", "Linda", "James", "Susan", "David", "Karen", "Paul", "Nancy"]
_LAST = ["Smith", "Johnson", "Walker", "Harris", "Young", "King", "Wright", "Lopez", "Hill", "Green"]
_SUBJECTS = ["Product test results", "Quarterly sales review", "Marketing plan draft",
             "Shipment confirmation", "Meeting agenda", "Research proposal"]
_FORM_TITLES = ["FAX TRANSMITTAL", "REGISTRATION FORM", "PRODUCT EVALUATION FORM",
                "CONFIDENTIAL MEMORANDUM", "REQUEST FOR INFORMATION"]
_INVOICE_ITEMS = ["Consulting services", "Office chairs", "Printer toner", "Software licence",
                  "Shipping and handling", "Maintenance contract", "Paper supplies", "Training session"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]
_TOPICS = [("How Coral Reefs Recover", "coral reef recovery"), ("A Short History of the Bicycle", "the bicycle"),
           ("Why Bread Dough Rises", "bread making"), ("The Basics of Solar Panels", "solar power"),
           ("Caring for Indoor Ferns", "fern care"), ("Understanding Tide Tables", "reading a tide table")]
_SITES = ["www.learnmore.org", "www.dailyexplainer.com", "www.science-notes.net", "www.homeguide.org"]
_SENTENCES = ["Researchers have long been interested in {}.",
              "This page gives a short overview of {} for general readers.",
              "Most of the details depend on local conditions and careful observation.",
              "Several practical tips are listed below, along with common mistakes.",
              "Readers who want more depth can follow the references at the end of the page.",
              "In everyday terms, {} is easier to understand than it first appears.",
              "Small changes can have a large effect over a period of several years.",
              "Experts recommend checking the figures against a second source."]
# CoT phrasing variants (steps 5 and 6 come from the field itself).
_STEP1 = ("Identify the document type: this is {}.", "Determine the document type: the image shows {}.",
          "Recognise the layout: this document is {}.")
_STEP2 = ("The question asks for {}.", "The question is about {}.", "We need to find {}.")
_STEP3 = ("Scan {} for {}.", "Look in {} for {}.", "Search {} for {}.")
_STEP4 = ("The line '{}' appears near y={} {}.", "The text '{}' is found near y={} {}.")
_STEP7 = ("The answer {} is located at {}.", "The answer {} is at {}.", "So the answer is {}, located at {}.")


@dataclass(frozen=True)
class DemoPaths:
    """Where ``write_demo_data`` put everything."""

    root: Path  # the output directory
    image_dir: Path  # root / "images", the image root of the original layout
    train: Path  # root / "D3_train.json"
    val: Path  # root / "D4_val.json"
    test: Path  # root / "D_test.json"
    bad: Path  # root / "bad_records.json"

    @classmethod
    def under(cls, root: Path) -> DemoPaths:
        root = Path(root)
        return cls(root, root / "images", root / "D3_train.json", root / "D4_val.json",
                   root / "D_test.json", root / "bad_records.json")


@dataclass(frozen=True)
class _Field:
    """One answerable span plus the hints its CoT steps are written from."""

    question: str
    answer: str
    box: list[float]
    target: str  # what the question asks for: "the total amount paid"
    area: str  # where to look: "the lower part of the receipt"
    cue: str  # what to look for there: "the 'TOTAL' label"
    anchor: str  # the span that locates the answer: its label, or the answer itself
    anchor_box: list[float]
    relation: str  # how the answer sits relative to the anchor
    verify: str
    read: str = "Read the value next to the label"


def _kv_field(question: str, answer: str, label: str, boxes: tuple[list[float], list[float]],
              target: str, area: str, verify: str) -> _Field:
    """A value printed to the right of its label; ``boxes`` = (label box, value box)."""
    return _Field(question, answer, boxes[1], target, area, f"the '{label}' label", label, boxes[0],
                  "with a value to its right", verify)


def _self_field(question: str, answer: str, box: list[float], target: str, area: str, cue: str,
                relation: str, verify: str, read: str) -> _Field:
    """A span with no label that is found by its place and style (a heading, a store name)."""
    return _Field(question, answer, box, target, area, cue, answer, box, relation, verify, read)


@dataclass
class _Doc:
    image: Image.Image
    regions: list[dict]
    fields: list[_Field]
    desc: str  # the document type, for CoT step 1


_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@lru_cache(maxsize=None)
def _font(kind: str, size: int) -> _Font:
    try:
        return ImageFont.truetype(str(FONT_DIR / _FONT_FILES[kind]), size)
    except OSError:  # no DejaVu here: Pillow's bundled font renders at any size, so never fail
        return ImageFont.load_default(size=size)


def _fit(kind: str, size: int, text: str, max_width: float) -> tuple[_Font, int]:
    """The largest font of ``kind`` not above ``size`` in which ``text`` fits ``max_width``."""
    while size > 12 and _font(kind, size).getlength(text) > max_width:
        size -= 1
    return _font(kind, size), size


class _Canvas:
    """A white page that records the exact box of every span it draws."""

    def __init__(self, width: int, rng: random.Random) -> None:
        self.width, self.rng = width, rng
        self.ink = (rng.randint(0, 40),) * 3
        self.image = Image.new("RGB", (width, MAX_SIDE), "white")  # cropped to the content in finish()
        self.draw = ImageDraw.Draw(self.image)
        self.regions: list[dict] = []

    def text(self, x: float, y: float, text: str, font: _Font, align: str = "left",
             fill: tuple[int, int, int] | None = None) -> list[float]:
        """Draw ``text`` with its left edge (right edge, centre: per ``align``) at ``x``; return its box."""
        if align != "left":
            width = self.draw.textlength(text, font=font)
            x -= width if align == "right" else width / 2
        xy = (round(x), round(y))  # one integer origin for both text() and textbbox()
        self.draw.text(xy, text, font=font, fill=fill or self.ink)
        box = [float(v) for v in self.draw.textbbox(xy, text, font=font)]
        self.regions.append({"id": len(self.regions), "bbox": box, "text": text,
                             "confidence": round(self.rng.uniform(0.9, 0.995), 3)})
        return box

    def kv(self, x: float, y: float, label: str, value: str, label_font: _Font, value_font: _Font,
           value_x: float | None = None) -> tuple[list[float], list[float]]:
        """Draw ``label`` then ``value`` (at ``value_x``, else just after the label); return both boxes."""
        label_box = self.text(x, y, label, label_font)
        gap = value_font.getlength("  ")  # two spaces keep the spans (and their boxes) well apart
        return label_box, self.text(label_box[2] + gap if value_x is None else value_x, y, value, value_font)

    def rule(self, y: float, x1: float, x2: float, width: int = 1) -> None:
        self.draw.line([(x1, y), (x2, y)], fill=self.ink, width=width)

    def finish(self, height: int, fields: list[_Field], desc: str) -> _Doc:
        height = max(MIN_SIDE, min(MAX_SIDE, height))
        if any(min(r["bbox"]) < 0 or r["bbox"][2] > self.width or r["bbox"][3] > height for r in self.regions):
            raise RuntimeError(f"layout bug: a text span of {desc!r} leaves the page")  # never ship a bad box
        return _Doc(self.image.crop((0, 0, self.width, height)), self.regions, fields, desc)


def _date(rng: random.Random, style: str, first_year: int = 1988) -> str:
    y, m, d = rng.randint(first_year, 2021), rng.randint(1, 12), rng.randint(1, 28)
    return {"dmy": f"{d:02d}/{m:02d}/{y}", "long": f"{_MONTHS[m - 1]} {d}, {y}",
            "short": f"{d} {_MONTHS[m - 1][:3]} {y}"}[style]


def _phone(rng: random.Random) -> str:
    return f"({rng.randint(200, 989)}) 555-{rng.randint(0, 9999):04d}"


# Money is kept in integer units (cents, rupiah) so that totals agree exactly with their parts.
def _ringgit(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _rupiah(amount: int) -> str:
    return f"{amount:,}"


def _dollars(cents: int) -> str:
    return f"${cents // 100:,}.{cents % 100:02d}"


def _wrap(text: str, font: _Font, width: float) -> list[str]:
    """Greedy word wrap. Sums word widths (linear, unlike re-measuring each growing line); the
    kerning this ignores is a pixel or two, far inside the page margins."""
    space = font.getlength(" ")
    lines, line, used = [], [], -space
    for word in text.split():
        w = font.getlength(word)
        if line and used + space + w > width:
            lines.append(" ".join(line))
            line, used = [], -space
        line.append(word)
        used += space + w
    return lines + [" ".join(line)]


def _receipt(rng: random.Random, sroie: bool) -> _Doc:
    """A till receipt (CORD: Indonesian, rupiah; SROIE: Malaysian, ringgit): tall, narrow, monospaced."""
    size = rng.randint(12, 18)
    font, bold, lh, margin = _font("mono", size), _font("mono_bold", size), round(size * 1.5), 2 * size
    shop = rng.choice(_SROIE_SHOPS if sroie else _CORD_SHOPS)
    head, head_size = _fit("mono_bold", size + rng.randint(4, 8), shop, 520)
    street = rng.choice(_SROIE_STREETS if sroie else _CORD_STREETS)
    phone = (f"03-{rng.randint(1000, 9999)} {rng.randint(1000, 9999)}" if sroie
             else f"021-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}")
    date, time = _date(rng, "dmy", first_year=2015), f"{rng.randint(8, 21):02d}:{rng.randint(0, 59):02d}"
    rate, money = (6, _ringgit) if sroie else (10, _rupiah)
    rows = []
    for name in rng.sample(_SROIE_ITEMS if sroie else _CORD_ITEMS, rng.randint(3, 7)):
        qty, unit = rng.randint(1, 3), rng.randint(150, 4500) if sroie else rng.randrange(8000, 60000, 500)
        rows.append((f"{qty} x {name}", qty * unit))
    subtotal = sum(v for _, v in rows)
    tax = (subtotal * rate + 50) // 100
    tax_label = f"TAX {rate}%"
    sums = [("SUBTOTAL", subtotal), (tax_label, tax), ("TOTAL", subtotal + tax)]
    widest = max(head.getlength(shop), font.getlength(street), font.getlength(f"DATE: {date}   {time}"),
                 *(font.getlength(f"{label}   {money(v)}") for label, v in rows + sums))
    width = max(MIN_SIDE, math.ceil(widest) + 2 * margin)  # as narrow as the longest line allows
    c, right, y = _Canvas(width, rng), width - margin, margin
    shop_box = c.text(width / 2, y, shop, head, "center")
    y += round(head_size * 1.6)
    street_box = c.text(width / 2, y, street, font, "center")
    boxes = {"TEL:": c.kv(margin, y + lh, "TEL:", phone, font, font),
             "DATE:": c.kv(margin, y + 2 * lh, "DATE:", date, font, font)}
    c.text(right, y + 2 * lh, time, font, "right")
    y += 3 * lh
    for block in (rows, sums):
        c.rule(y, margin, right)
        y += lh // 2
        for label, value in block:
            f = bold if label == "TOTAL" else font
            boxes[label] = (c.text(margin, y, label, f), c.text(right, y, money(value), f, "right"))
            y += lh
    c.rule(y, margin, right)
    c.text(width / 2, y + lh // 2, "THANK YOU, PLEASE COME AGAIN" if sroie else "TERIMA KASIH", font, "center")
    y += 2 * lh
    low, top = "the lower part of the receipt", "the header block below the store name"
    fields = [
        _kv_field(rng.choice(["What is the total amount?", "What is the total amount paid?",
                              "What is the TOTAL on the receipt?"]), money(subtotal + tax), "TOTAL", boxes["TOTAL"],
                  "the total amount paid", low, rng.choice(["Verify the value is consistent with the subtotal and tax.",
                                                            "Check that the subtotal plus the tax gives this total."])),
        _kv_field("What is the subtotal?", money(subtotal), "SUBTOTAL", boxes["SUBTOTAL"], "the subtotal before tax",
                  low, "Confirm it equals the sum of the item prices above it."),
        _kv_field("How much tax was charged?", money(tax), tax_label, boxes[tax_label], "the tax amount", low,
                  f"Confirm it is about {rate}% of the subtotal."),
        _kv_field(rng.choice(["What is the date?", "What is the date on the receipt?"]), date, "DATE:",
                  boxes["DATE:"], "the transaction date", top, "Confirm the value is a date in DD/MM/YYYY form."),
        _kv_field("What is the phone number?", phone, "TEL:", boxes["TEL:"], "the store's phone number", top,
                  "Confirm the value has the format of a phone number."),
        _self_field("What is the name of the store?", shop, shop_box, "the name of the store", "the top of the receipt",
                    "the store header", "as the first and largest line",
                    "Confirm it is the header printed above the address.", "Read the header line"),
    ]
    if sroie:  # SROIE's key fields include the address
        fields.append(_self_field("What is the address of the store?", street, street_box, "the store address",
                                  "the top of the receipt", "the line under the store name",
                                  "directly below the store name", "Confirm it contains a street and a postcode.",
                                  "Read that line"))
    desc = f"a printed store receipt from {shop}" if sroie else f"a retail receipt from {shop}"
    return c.finish(max(y + margin, round(width * rng.uniform(1.6, 2.2))), fields, desc)


def _form(rng: random.Random) -> _Doc:
    """A FUNSD-like business form: title, boxed key/value fields on blanks, remarks, check boxes."""
    size, width = rng.randint(14, 20), rng.randint(600, 1000)
    font, bold, lh, margin = _font("sans", size), _font("bold", size), round(size * 1.5), 3 * size
    c, right, y = _Canvas(width, rng), width - margin, margin
    title = rng.choice(_FORM_TITLES)
    head, head_size = _fit("bold", size + rng.randint(4, 8), title, width - 2 * margin)
    title_box = c.text(width / 2, y, title, head, "center")
    y += round(head_size * 1.5)
    c.rule(y, margin, right, width=3)
    y += lh
    values = {"Name": f"{rng.choice(_FIRST)} {rng.choice(string.ascii_uppercase)}. {rng.choice(_LAST)}",
              "Date": _date(rng, rng.choice(["long", "dmy", "short"])), "Phone": _phone(rng), "Fax": _phone(rng),
              "Company": rng.choice(_COMPANIES), "Subject": rng.choice(_SUBJECTS)}
    chosen = set(rng.sample(list(values), rng.randint(4, 6)))
    keys = [k for k in values if k in chosen]  # keep the natural field order
    value_x = margin + 3 * size + max(bold.getlength(f"{k}:") for k in keys)
    top, boxes = y, {}
    y += size
    for key in keys:
        boxes[key] = c.kv(margin + size, y, f"{key}:", values[key], bold, font, value_x)
        c.rule(y + round(size * 1.4), value_x, right - size)  # the blank the value was filled in on
        y += round(size * 2.2)
    c.draw.rectangle([margin, top, right, y], outline=c.ink, width=2)
    c.text(margin, y + lh, "Remarks:", bold)
    y += 2 * lh
    remarks = " ".join(s.format("the attached documents") for s in rng.sample(_SENTENCES, rng.randint(1, 3)))
    for line in _wrap(remarks, font, right - margin):
        c.text(margin, y, line, font)
        y += lh
    x, y, ticked = margin, y + lh, rng.randrange(3)
    for i, option in enumerate(["Urgent", "For review", "Please reply"]):
        c.draw.rectangle([x, y, x + size, y + size], outline=c.ink, width=1)
        if i == ticked:
            c.draw.line([(x, y), (x + size, y + size)], fill=c.ink, width=2)
            c.draw.line([(x, y + size), (x + size, y)], fill=c.ink, width=2)
        x = c.text(x + 2 * size, y, option, font)[2] + 2 * size
    y += 3 * lh
    c.rule(y, margin, margin + 12 * size)
    c.text(margin, y + size // 2, "Signature", font)
    y += 2 * lh
    specs = {"Name": ("What is the name written on the form?", "the person's name",
                      "Confirm the value is a person's name."),
             "Date": ("What is the date?", "the date on the form", "Confirm the value has the format of a date."),
             "Phone": ("What is the phone number?", "the phone number",
                       "Confirm the value has the format of a phone number."),
             "Fax": ("What is the fax number?", "the fax number",
                     "Confirm it is the number on the Fax line, not the Phone line."),
             "Company": ("Which company is named on the form?", "the company name",
                         "Confirm the value is an organisation name."),
             "Subject": ("What is the subject?", "the subject of the form",
                         "Confirm the value is a short description.")}
    fields = [_kv_field(specs[k][0], values[k], f"{k}:", boxes[k], specs[k][1], "the key-value fields of the form",
                        specs[k][2]) for k in keys]
    fields.append(_self_field("What is the title of the form?", title, title_box, "the title of the form",
                              "the top of the page", "the main heading", "as the bold centred heading",
                              "Confirm it is the largest text on the form.", "Read the heading"))
    return c.finish(max(y + margin, round(width * rng.uniform(1.2, 1.35))), fields, f"a business form titled '{title}'")


def _invoice(rng: random.Random) -> _Doc:
    """A DocVQA-like invoice: letterhead, invoice number/date/customer, ruled item table, totals."""
    size = rng.randint(14, 20)
    width = rng.randint(max(800, 50 * size), 1200)  # wide enough for the four-column table
    font, bold = _font("sans", size), _font("bold", size)
    lh, margin, pad = round(size * 1.6), 3 * size, round(size * 0.6)
    c, right, y = _Canvas(width, rng), width - margin, margin
    company, customer = rng.sample(_COMPANIES, 2)
    head, head_size = _fit("bold", size + rng.randint(6, 8), company, (right - margin) * 0.6)
    company_box = c.text(margin, y, company, head)
    c.text(right, y, "INVOICE", _font("bold", head_size + 2), "right")
    y += round(head_size * 1.8)
    c.text(margin, y, rng.choice(["12 Market Street, Springfield", "400 Oak Avenue, Riverside"]), font)
    c.text(margin, y + lh, f"Tel: {_phone(rng)}", font)
    c.rule(y + 2 * lh, margin, right, width=2)
    y += 3 * lh
    meta = {"Invoice No:": f"INV-{rng.randint(10000, 99999)}", "Date:": _date(rng, "long"),
            "Bill To:": customer, "Terms:": "Net 30"}
    value_x = margin + 2 * size + max(bold.getlength(k) for k in meta)
    boxes = {}
    for label, value in meta.items():
        boxes[label] = c.kv(margin, y, label, value, bold, font, value_x)
        y += lh
    rows = [(name, rng.randint(1, 12), rng.randint(500, 250000))  # (item, quantity, unit price in cents)
            for name in rng.sample(_INVOICE_ITEMS, rng.randint(3, 6))]
    edges = [margin + f * (right - margin) for f in (0, 0.5, 0.64, 0.82, 1)]  # column borders
    row_h, top = round(size * 2), y + lh
    y = top
    c.draw.rectangle([margin, y, right, y + row_h], fill=(225, 225, 225))
    for cells, f in [(["Description", "Qty", "Unit Price", "Amount"], bold),
                     *(([name, str(qty), _dollars(unit), _dollars(qty * unit)], font) for name, qty, unit in rows)]:
        c.text(edges[0] + pad, y + size * 0.4, cells[0], f)
        for edge, cell in zip(edges[2:], cells[1:]):  # numbers are right-aligned in their column
            c.text(edge - pad, y + size * 0.4, cell, f, "right")
        y += row_h
        c.rule(y, margin, right)
    c.draw.rectangle([margin, top, right, y], outline=c.ink, width=2)
    for x in edges[1:-1]:
        c.draw.line([(x, top), (x, y)], fill=c.ink, width=1)
    subtotal = sum(qty * unit for _, qty, unit in rows)
    tax = (subtotal * 8 + 50) // 100
    y += pad
    for label, value in [("Subtotal", subtotal), ("Tax (8%)", tax), ("Total Due", subtotal + tax)]:
        f = bold if label == "Total Due" else font
        boxes[label] = (c.text(edges[3] - pad, y, label, f, "right"),
                        c.text(edges[4] - pad, y, _dollars(value), f, "right"))
        y += lh
    c.text(margin, y + lh, "Payment is due within 30 days. Thank you for your business.", font)
    y += 2 * lh
    header = "the header block under the letterhead"
    fields = [
        _kv_field("What is the invoice number?", meta["Invoice No:"], "Invoice No:", boxes["Invoice No:"],
                  "the invoice number", header, "Confirm the value has the INV- prefix used for invoice numbers."),
        _kv_field(rng.choice(["What is the date of the invoice?", "What is the invoice date?"]), meta["Date:"], "Date:",
                  boxes["Date:"], "the invoice date", header, "Confirm the value has the format of a date."),
        _kv_field("Who is the invoice billed to?", customer, "Bill To:", boxes["Bill To:"],
                  "the customer the invoice is billed to", header,
                  "Confirm it is the customer, not the company that issued the invoice."),
        _kv_field(rng.choice(["What is the total amount due?", "What is the total due on the invoice?"]),
                  _dollars(subtotal + tax), "Total Due", boxes["Total Due"], "the total amount due",
                  "the area below the items table", "Verify the value equals the subtotal plus the tax."),
        _self_field("Which company issued the invoice?", company, company_box, "the company that issued the invoice",
                    "the top of the page", "the letterhead", "as the largest text at the top left",
                    "Confirm it is the sender, not the Bill To customer.", "Read the letterhead"),
    ]
    return c.finish(max(y + margin, round(width * rng.uniform(1.1, 1.3))), fields, f"an invoice from {company}")


def _text_page(rng: random.Random) -> _Doc:
    """A VisualMRC-like web page: site bar, title, byline, two wrapped paragraphs."""
    width, size = rng.randint(600, 1000), rng.randint(12, 18)
    font, lh, margin = _font("sans", size), round(size * 1.5), rng.randint(30, 60)
    c, right, y = _Canvas(width, rng), width - margin, margin // 2
    title, subject = rng.choice(_TOPICS)
    site, author, date = rng.choice(_SITES), f"{rng.choice(_FIRST)} {rng.choice(_LAST)}", _date(rng, "long")
    site_box = c.text(margin, y, site, font)
    c.text(right, y, "Home | Articles", font, "right", fill=(90, 90, 90))
    c.rule(y + lh, 0, width)
    y += 2 * lh
    head, head_size = _fit("bold", rng.randint(22, 28), title, right - margin)
    title_box = c.text(margin, y, title, head)
    y += round(head_size * 1.6)
    boxes = {"Written by": c.kv(margin, y, "Written by", author, font, font),
             "Last updated:": c.kv(margin, y + lh, "Last updated:", date, font, font)}
    c.rule(y + 2 * lh, margin, right)
    y += 3 * lh
    sentences = [s.format(subject) for s in rng.sample(_SENTENCES, rng.randint(5, len(_SENTENCES)))]
    cut = rng.randint(2, len(sentences) - 2)
    for paragraph in (" ".join(sentences[:cut]), " ".join(sentences[cut:])):
        for line in _wrap(paragraph, font, right - margin):
            c.text(margin, y, line, font)
            y += lh
        y += lh // 2
    byline = "the byline under the title"
    fields = [
        _self_field("What is the title of the page?", title, title_box, "the title of the page", "the top of the page",
                    "the main heading", "as the largest bold heading", "Confirm it is the largest text on the page.",
                    "Read the heading"),
        _kv_field("Who wrote the article?", author, "Written by", boxes["Written by"], "the author of the article",
                  byline, "Confirm the value is a person's name."),
        _kv_field("When was the page last updated?", date, "Last updated:", boxes["Last updated:"],
                  "the date of the last update", byline, "Confirm the value has the format of a date."),
        _self_field("What is the name of the website?", site, site_box, "the website the page comes from",
                    "the header bar at the very top", "the site address", "at the left end of the header bar",
                    "Confirm it has the form of a web address.", "Read the address"),
    ]
    return c.finish(max(y + margin, round(width * rng.uniform(0.6, 0.9))), fields,  # a landscape screenshot
                    f"a web page with a short article about {subject}")


_LAYOUTS: dict[str, Callable[[random.Random], _Doc]] = {
    "CORD": lambda rng: _receipt(rng, sroie=False), "DocVQA": _invoice, "FUNSD": _form,
    "SROIE": lambda rng: _receipt(rng, sroie=True), "VisualMRC": _text_page}


def _cot(rng: random.Random, desc: str, f: _Field) -> list[str]:
    """Seven one-line steps in the teacher's style, without the ``Step N:`` prefix."""
    return [rng.choice(_STEP1).format(desc), rng.choice(_STEP2).format(f.target),
            rng.choice(_STEP3).format(f.area, f.cue),
            rng.choice(_STEP4).format(f.anchor, int(f.anchor_box[1]), f.relation),
            f"{f.read}: {f.answer}" + ("" if f.answer.endswith(".") else "."), f.verify,
            rng.choice(_STEP7).format(f.answer, f.box)]


def _record(rng: random.Random, image_id: str, image_file: str, dataset: str, doc: _Doc, f: _Field) -> dict:
    steps = _cot(rng, doc.desc, f)
    raw = render_target(steps, f.answer, f.box)  # the teacher's text in the target layout
    return {"image_id": image_id, "image_file": image_file, "dataset": dataset, "question": f.question,
            "answer_gt": f.answer if dataset in _GT_DATASETS else "", "bbox_gt": None, "cot_steps": steps,
            "answer_pred": f.answer, "bbox_pred": list(f.box),
            "regions": [{**r, "bbox": list(r["bbox"])} for r in doc.regions],
            "raw_output": raw, "val_scores": {"anls": 1.0, "iou": 1.0}, "val_accept": True}


def _names(dataset: str, number: int, rng: random.Random) -> tuple[str, str]:
    """``(image_id, image_file)`` in the released data's naming scheme."""
    if dataset == "CORD":
        return f"cord_{number:05d}", f"receipt_{number:05d}.png"
    if dataset == "DocVQA":
        doc = "".join(rng.choices(string.ascii_lowercase, k=4)) + f"{number:04d}"
        return f"docvqa_{doc}_p0", f"{doc}_p0.png"
    if dataset == "FUNSD":
        return f"funsd_{82000000 + number}", f"{82000000 + number}.png"
    if dataset == "SROIE":
        return f"sroie_X000{16400000 + number:08d}", f"X000{16400000 + number:08d}.jpg"
    return f"visualmrc_val_{number:05d}", f"val_{number:05d}.png"


def _save(image: Image.Image, path: Path) -> None:
    if path.suffix == ".jpg":
        image.save(path, quality=90)  # SROIE scans are JPEGs: lossy pixels, but the boxes stay exact
    else:
        image.save(path, compress_level=1)  # speed over size: a higher level barely shrinks white pages


def _document(number: int, seed: int, n_questions: int, image_dir: Path) -> tuple[Image.Image, Path, list[dict]]:
    """Render document ``number``: its image, where to save it, and ``n_questions`` records about it."""
    rng = random.Random(f"docval-sft:{seed}:{number}")
    dataset = DATASETS[number % len(DATASETS)]
    doc = _LAYOUTS[dataset](rng)
    image_id, image_file = _names(dataset, number, rng)
    records = [_record(rng, image_id, image_file, dataset, doc, f) for f in rng.sample(doc.fields, n_questions)]
    return doc.image, image_dir / _FOLDERS[dataset] / image_file, records


def make_records(n_records: int, image_dir: Path, *, seed: int = 0, start_index: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Render documents into ``image_dir`` and return ``n_records`` JSON-ready Phase A records.

    Documents are numbered from ``start_index`` and cycle through the five datasets; each one gets
    2-4 questions (like DocVQA pages), so at most ``n_records`` documents are used and calls whose
    ``start_index`` are ``n_records`` or more apart never share an image. ``progress(done, total)``
    is called after each document; nothing is printed.
    """
    image_dir = Path(image_dir)
    for folder in _FOLDERS.values():
        (image_dir / folder).mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    number = start_index
    # PNG/JPEG encoding releases the GIL, so it runs in threads while the next page is drawn.
    with ThreadPoolExecutor(max_workers=2) as saver:
        pending: deque[Future] = deque()
        while len(records) < n_records:
            k = random.Random(f"docval-sft:{seed}:{number}:k").randint(2, 4)
            image, path, new = _document(number, seed, min(k, n_records - len(records)), image_dir)
            pending.append(saver.submit(_save, image, path))
            if len(pending) > 4:  # bound memory: only a few rendered pages wait for encoding
                pending.popleft().result()
            records += new
            number += 1
            if progress is not None:
                progress(len(records), n_records)
        for future in pending:
            future.result()  # re-raises a failed save
    return records


def _write_json(path: Path, records: list[dict]) -> None:
    path.write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_bad_records(path: Path, image_dir: Path) -> list[dict]:
    """Write ``bad_records.json``: one record per validator error path, each naming it in ``_expect``.

    All use ``dataset`` CORD (``bad_`` is no dataset prefix) and images under ``image_dir/CORD``:
    a valid receipt, a PNG cut to half its bytes and a text file with a ``.png`` name.
    """
    folder = Path(image_dir) / "CORD"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random("docval-sft:bad")
    doc = _receipt(rng, sroie=False)
    buffer = BytesIO()
    doc.image.save(buffer, format="PNG", compress_level=1)
    png = buffer.getvalue()
    (folder / "receipt_bad.png").write_bytes(png)
    (folder / "receipt_truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "receipt_not_an_image.png").write_text("This is a text file, not a PNG image.\n", encoding="utf-8")
    base = _record(rng, "bad", "receipt_bad.png", "CORD", doc, doc.fields[0])
    steps, (x1, y1, x2, y2) = base["cot_steps"], base["bbox_pred"]

    def bad(expect: str, **changes: object) -> dict:
        record = {"image_id": f"bad_{expect}", "_expect": expect,
                  **copy.deepcopy({k: v for k, v in base.items() if k != "image_id"})}
        record.update(changes)
        return record

    missing = bad("missing_field")
    del missing["answer_pred"]
    records = [
        bad("fallback", cot_steps=["Identify the document type.", "Locate the relevant field.",
                                   "The answer could not be determined.", "Return a fallback answer."],
            answer_pred="N/A", bbox_pred=[0, 0, 100, 100], raw_output="Error: could not parse the teacher response"),
        bad("bbox_len", bbox_pred=[x1, y1, x2]),
        bad("bbox_inverted", bbox_pred=[x2, y1, x1, y2]),
        bad("bbox_negative", bbox_pred=[-5.0, y1, x2, y2]),
        bad("empty_question", question=""),
        missing,
        bad("missing_image", image_file="receipt_missing_99999.png"),
        bad("truncated_image", image_file="receipt_truncated.png"),
        bad("not_an_image", image_file="receipt_not_an_image.png"),
        bad("six_steps", cot_steps=steps[:6]),
        bad("step_prefix", cot_steps=[f"Step {i}: {s}" for i, s in enumerate(steps, 1)]),
        bad("wrong_type", cot_steps=" ".join(steps)),
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, records)
    return records


def write_demo_data(out_dir: Path, *, n_train: int = 64, n_val: int = 16, n_test: int = 16, seed: int = 0,
                    progress: Callable[[int, int], None] | None = None) -> DemoPaths:
    """Write a demo dataset in the released layout: images, the three splits and ``bad_records.json``.

    The splits use disjoint document numbers, hence disjoint images. ``progress(done, total)``
    counts records over all three splits.
    """
    paths = DemoPaths.under(Path(out_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    total, offset = n_train + n_val + n_test, 0
    for path, n in ((paths.train, n_train), (paths.val, n_val), (paths.test, n_test)):
        report = None if progress is None else (lambda done, _n, base=offset: progress(base + done, total))
        _write_json(path, make_records(n, paths.image_dir, seed=seed, start_index=offset, progress=report))
        offset += n  # a split of n records uses at most n documents
    write_bad_records(paths.bad, paths.image_dir)
    return paths
