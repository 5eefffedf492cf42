"""IoU ceiling of each box format: a perfect student's score when the teacher box goes through the target's grid.

    python benchmarks/bbox_grid_ceiling.py [--n-train 64 --n-val 16 --n-test 16 --seed 0] [--page 1700x2200 ...]

A student that writes exactly the target box still loses IoU on a grid: ``norm1000`` rounds each coordinate to
1/1000 of the page, which on a word-sized box is a sizeable part of its height. Renders the demo documents (no
model), rounds every record's teacher box through each format (the library's own ``target_box`` and
``box_to_pixels``, as training and evaluate do) and prints one JSON line per format: mean/min IoU, the share below
0.95, mAP@[.5:.95] and acc@IoU.5. ``--page WxH`` also scales every demo box onto a page of that size (the released
DocVQA pages are about 1700x2200; A4 at 300 dpi is 2480x3508), keeping the box's size in pixels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def ceiling(boxes: list[tuple[list[float], tuple[int, int]]], fmt: str) -> dict[str, float]:
    from docval_sft.format import box_to_pixels, target_box
    from docval_sft.metrics import accuracy_at, iou, map_50_95

    ious = [iou(box_to_pixels(target_box(box, fmt, size), fmt, size), box) for box, size in boxes]
    return {"mean_iou": round(statistics.mean(ious), 4), "min_iou": round(min(ious), 4),
            "share_below_0.95": round(sum(v < 0.95 for v in ious) / len(ious), 4),
            "map_50_95": round(map_50_95(ious), 4), "acc_iou_50": round(accuracy_at(ious), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--page", action="append", default=[], help="WxH: also place the boxes on such a page")
    args = parser.parse_args()

    from PIL import Image

    from docval_sft.demo import make_demo
    from docval_sft.format import BBOX_FORMATS
    from docval_sft.validate import prepare_split

    with tempfile.TemporaryDirectory() as tmp:
        demo = make_demo(Path(tmp) / "demo", n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                         seed=args.seed, with_model=False)
        boxes: list[tuple[list[float], tuple[int, int]]] = []
        for name, path in (("train", demo.data.train), ("val", demo.data.val), ("test", demo.data.test)):
            split = prepare_split(name, path, demo.data.image_dir)
            for record, image in zip(split.records, split.image_paths, strict=True):
                with Image.open(image) as im:
                    boxes.append((list(record.bbox_pred), im.size))
    pages = [("demo pages", boxes)]
    for page in args.page:
        w, h = (int(v) for v in page.lower().split("x"))
        # the same box sizes in pixels, at the same relative place, on a larger page
        pages.append((f"{w}x{h} pages", [([b[0] / s[0] * w, b[1] / s[1] * h, b[0] / s[0] * w + b[2] - b[0],
                                             b[1] / s[1] * h + b[3] - b[1]], (w, h)) for b, s in boxes]))
    for label, group in pages:
        for fmt in BBOX_FORMATS:
            print(json.dumps({"bench": "bbox_grid_ceiling", "pages": label, "records": len(group), "bbox_format": fmt,
                              **ceiling(group, fmt)}))


if __name__ == "__main__":
    main()
