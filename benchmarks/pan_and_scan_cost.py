"""What pan & scan costs in tokens (and data-path time), per dataset, on the demo documents. One JSON object.

The processor is Gemma 3's at its real geometry (896x896 views, 256 image tokens each: transformers'
Gemma3ImageProcessor and Gemma3Processor) with the tiny demo tokenizer, so image tokens are exact and text tokens
are the tiny tokenizer's (the target is Gemma 3's own count only with the real tokenizer: pass --model for it).
Token counts come from ``TokenCounter``, the counter `validate-data` and training use.

    python benchmarks/pan_and_scan_cost.py [--n-train 64] [--model google/gemma-3-12b-it] [--timed 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# pages named in the issue: a 1700x2200 DocVQA scan and a 600x2400 receipt (geometry only, no pixels needed)
REFERENCE_PAGES = {"docvqa_1700x2200": (1700, 2200), "receipt_600x2400": (600, 2400)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=64, help="demo records (all datasets)")
    parser.add_argument("--model", default=None, help="a Gemma 3 model id/dir for its real processor")
    parser.add_argument("--timed", type=int, default=16, help="records whose collation is timed per mode")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from PIL import Image

    from docval_sft.build import load_processor
    from docval_sft.documents import write_demo_data
    from docval_sft.images import resolve_image
    from docval_sft.lengths import TokenCounter
    from docval_sft.records import load_records
    from docval_sft.tiny import build_tiny_processor
    from docval_sft.vision import crop_boxes, vision_kwargs

    with tempfile.TemporaryDirectory() as tmp:
        data = write_demo_data(Path(tmp), n_train=args.n_train, n_val=1, n_test=1, seed=0)
        model = args.model
        if model is None:
            model = str(Path(tmp) / "gemma3-geometry")
            build_tiny_processor(model, image_size=896, image_seq_length=256)
        modes = {"off": vision_kwargs(None), "on": vision_kwargs(None, do_pan_and_scan=True)}
        counters = {m: TokenCounter(load_processor(model, vision=v)) for m, v in modes.items()}
        records = load_records(data.train).records
        rows: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        seconds: dict[str, list[float]] = {m: [] for m in modes}
        sizes: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, record in enumerate(records):
            path = resolve_image(record, data.image_dir, data.train.parent)
            with Image.open(path) as img:
                page = img.convert("RGB")
            ds = record.dataset.lower()
            sizes[ds].append(page.size)
            for mode, counter in counters.items():
                start = time.perf_counter()
                count = counter.count(record, page)
                if i < args.timed:
                    seconds[mode].append(time.perf_counter() - start)
                rows[ds][f"image_{mode}"].append(count.image)
                rows[ds][f"total_{mode}"].append(count.total)
            rows[ds]["crops"].append(len(crop_boxes(counters["on"].collator.processor, page.size, modes["on"])))
        per_dataset = {}
        for ds, r in sorted(rows.items()):
            per_dataset[ds] = {
                "records": len(r["crops"]),
                "page_sizes": f"{min(w for w, _ in sizes[ds])}-{max(w for w, _ in sizes[ds])} x "
                              f"{min(h for _, h in sizes[ds])}-{max(h for _, h in sizes[ds])}",
                "records_cropped": sum(c > 0 for c in r["crops"]),
                "crops_mean": round(statistics.mean(r["crops"]), 2),
                "image_tokens_mean_off": round(statistics.mean(r["image_off"]), 1),
                "image_tokens_mean_on": round(statistics.mean(r["image_on"]), 1),
                "total_tokens_mean_off": round(statistics.mean(r["total_off"]), 1),
                "total_tokens_mean_on": round(statistics.mean(r["total_on"]), 1),
            }
        everything = {k: [v for r in rows.values() for v in r[k]] for k in ("total_off", "total_on", "image_on")}
        on_processor = counters["on"].collator.processor
        print(json.dumps({
            "processor": args.model or "Gemma 3 geometry (896 px, 256 tokens per view), tiny demo tokenizer",
            "records": len(records), "per_dataset": per_dataset,
            "all": {"total_tokens_mean_off": round(statistics.mean(everything["total_off"]), 1),
                    "total_tokens_mean_on": round(statistics.mean(everything["total_on"]), 1),
                    "total_tokens_max_off": max(everything["total_off"]),
                    "total_tokens_max_on": max(everything["total_on"])},
            "collate_ms_per_record": {m: round(1000 * statistics.median(s), 1) for m, s in seconds.items()},
            "reference_pages": {name: {"crops": len(c := crop_boxes(on_processor, size, modes["on"])),
                                       "image_tokens": (1 + len(c)) * on_processor.image_seq_length,
                                       "crop_boxes": [list(b) for b in c]}
                                for name, size in REFERENCE_PAGES.items()},
            "load_average": os.getloadavg()[0],
        }))


if __name__ == "__main__":
    main()
