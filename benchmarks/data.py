"""Training-data path speed and memory: records -> TRL dataset -> lazy image decoding -> TRL collation.

For each size (default 200 and 2,000 demo records) a fresh process loads and checks the records, builds the
`datasets.Dataset` (images stored as paths), then iterates it in batches of 4 through TRL's vision collator with
the tiny model's processor, exactly as the Trainer's dataloader does. One JSON line per size: records/s and peak
RSS. Peak RSS must not grow with the number of records: images are decoded per batch and released.

    python benchmarks/data.py [--sizes 200 2000] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def child(data: str, image_dir: str, model: str, batch_size: int) -> None:
    import datasets
    from transformers import AutoProcessor

    from docval_sft.convert import to_dataset
    from docval_sft.lengths import vision_collator
    from docval_sft.validate import prepare_split

    datasets.disable_progress_bars()
    processor = AutoProcessor.from_pretrained(model)
    collate = vision_collator(processor)
    rss_ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    split = prepare_split("train", data, image_dir)  # load + validate + decode-check every image
    checked = time.perf_counter()
    dataset = to_dataset(split.records, split.image_paths)
    tokens = 0
    for i in range(0, len(dataset), batch_size):
        batch = collate([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
        tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - start
    print(json.dumps({"records": len(dataset), "seconds": seconds, "check_seconds": checked - start,
                      "collated_tokens": tokens, "rss_ready_mib": rss_ready / 1024,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.batch_size)
        return

    from docval_sft.documents import make_records
    from docval_sft.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        records = make_records(max(args.sizes), root / "images", seed=0)
        model = build_tiny_model(root / "tiny")
        rows = []
        for n in args.sizes:
            data = root / f"train_{n}.json"
            data.write_text(json.dumps(records[:n]))
            out = subprocess.run([sys.executable, __file__, "--batch-size", str(args.batch_size), "--child",
                                  str(data), str(root / "images"), str(model)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["records_per_s"] = row["records"] / row["seconds"]
            rows.append(row)
            print(json.dumps({"bench": "data", **{k: round(v, 2) if isinstance(v, float) else v
                                                  for k, v in row.items()}}))
        if len(rows) > 1:
            growth = rows[-1]["peak_rss_mib"] - rows[0]["peak_rss_mib"]
            print(json.dumps({"bench": "data", "records": [r["records"] for r in rows],
                              "peak_rss_growth_mib": round(growth, 1),
                              "peak_rss_growth_per_1000_records_mib": round(
                                  growth / (rows[-1]["records"] - rows[0]["records"]) * 1000, 2)}))


if __name__ == "__main__":
    main()
