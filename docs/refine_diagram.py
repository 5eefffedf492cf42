"""Draw docs/refine-loop.png, the Phase B2 loop of `docval-sft refine` (docs/refine.md), with PIL only.

    python docs/refine_diagram.py [OUT.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

W, H = 1180, 700
BOX_W, BOX_H = 400, 92
INK, EDGE, FILL, ACCENT, NOTE = (30, 30, 30), (70, 90, 120), (236, 242, 250), (214, 236, 219), (110, 110, 110)


def _font(size: int) -> ImageFont.ImageFont:
    for name in ("DejaVuSans.ttf", "Arial.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


TITLE, TEXT, SMALL = _font(22), _font(17), _font(14)


def box(d: ImageDraw.ImageDraw, cx: int, cy: int, title: str, lines: list[str], fill=FILL) -> tuple[int, ...]:
    x0, y0, x1, y1 = cx - BOX_W // 2, cy - BOX_H // 2, cx + BOX_W // 2, cy + BOX_H // 2
    d.rounded_rectangle((x0, y0, x1, y1), radius=12, fill=fill, outline=EDGE, width=2)
    d.text((cx, y0 + 20), title, font=TEXT, fill=INK, anchor="mm")
    for i, line in enumerate(lines):
        d.text((cx, y0 + 46 + 19 * i), line, font=SMALL, fill=NOTE, anchor="mm")
    return x0, y0, x1, y1


def arrow(d: ImageDraw.ImageDraw, points: list[tuple[int, int]], label: str = "") -> None:
    d.line(points, fill=EDGE, width=3)
    (xa, ya), (xb, yb) = points[-2], points[-1]
    if xa == xb:  # vertical last segment
        s = 1 if yb > ya else -1
        head = [(xb, yb), (xb - 8, yb - 14 * s), (xb + 8, yb - 14 * s)]
    else:
        s = 1 if xb > xa else -1
        head = [(xb, yb), (xb - 14 * s, yb - 8), (xb - 14 * s, yb + 8)]
    d.polygon(head, fill=EDGE)
    if label:
        mx, my = points[-2]
        d.text((mx + 10, my - 22), label, font=SMALL, fill=INK)


def draw(out: Path) -> None:
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((W // 2, 30), "docval-sft refine: Phase B2 as iterative SFT", font=TITLE, fill=INK, anchor="mm")
    left, right = 300, 880
    ys = [120, 260, 400, 540]
    box(d, left, ys[0], "B1 student (iteration 0)", ["--adapter B1/final (LoRA) or a merged model",
                                                     "its eval error rate is the baseline"], ACCENT)
    box(d, left, ys[1], "1. generate on --data", ["greedy, batched (inference.generate)",
                                                  "iter_N/pool/predictions.jsonl"])
    box(d, left, ys[2], "2. verify every output", ["answer: ANLS > 0.8 or in OCR text",
                                                   "box: IoU > 0.5  |  reasoning: 7 steps, 5 and 7"])
    box(d, left, ys[3], "3. corrections: N worst errors", ["image + question + previous output + feedback",
                                                            "-> teacher's 7-step target (B1's renderer)"])
    box(d, right, ys[3], "4. train 1 epoch, lr 5e-6", ["continues the current LoRA adapter",
                                                       "train.py / SFTTrainer  ->  iter_N/final/"])
    box(d, right, ys[2], "5. measure on --eval-data", ["never trained on; verify again",
                                                       "error rate -> refine.log"])
    box(d, right, ys[1], "gain >= 5 points and", ["N < max_iterations (5)?", ""], (252, 244, 224))
    box(d, right, ys[0], "final/ = best iteration", ["lowest eval error rate", "(iteration 0 if none helped)"],
        ACCENT)
    half = BOX_H // 2
    for a, b in zip(ys, ys[1:]):
        arrow(d, [(left, a + half), (left, b - half)])
    arrow(d, [(left + BOX_W // 2, ys[3]), (right - BOX_W // 2, ys[3])])
    arrow(d, [(right, ys[3] - half), (right, ys[2] + half)])
    arrow(d, [(right, ys[2] - half), (right, ys[1] + half)])
    arrow(d, [(right, ys[1] - half), (right, ys[0] + half)], "no: stop")
    # yes: back to generation with the new adapter
    y = ys[1]
    arrow(d, [(right - BOX_W // 2, y), (left + BOX_W // 2, y)])
    d.text(((left + right) // 2, y - 16), "yes: again", font=SMALL, fill=INK, anchor="mm")
    d.text((W // 2, H - 60), "Each iteration writes iter_N/{pool/, verification.jsonl, corrections.jsonl, final/, "
                             "eval/, eval_verification.jsonl, iteration.json};", font=SMALL, fill=NOTE, anchor="mm")
    d.text((W // 2, H - 38), "--resume skips finished iterations. refine.log: error rate, each check's failure rate, "
                             "ANLS, IoU per iteration.", font=SMALL, fill=NOTE, anchor="mm")
    img.save(out)


if __name__ == "__main__":
    draw(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("refine-loop.png"))
