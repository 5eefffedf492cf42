"""Evaluate throughput (records/s) at batch 1 vs batch 4 on the tiny model, measured alternately in one run.

    python benchmarks/evaluate_throughput.py [--records 16] [--max-new-tokens 64] [--rounds 2] [--adapter DIR]

Prints one JSON line per measurement and a final line with the batch-4 / batch-1 speed ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--adapter", type=Path, default=None, help="a trained OUTPUT/final (default: base only)")
    args = parser.parse_args()

    import torch

    from docval_sft.demo import make_demo
    from docval_sft.evaluate import evaluate_records
    from docval_sft.inference import load_student
    from docval_sft.validate import prepare_split

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        demo = make_demo(Path(tmp) / "demo", n_train=4, n_val=4, n_test=args.records)
        split = prepare_split("test", demo.data.test, demo.data.image_dir)
        student = load_student(str(demo.model_dir), args.adapter)
        rates: dict[int, list[float]] = {1: [], 4: []}
        for round_ in range(args.rounds):
            for batch in (1, 4):  # alternate so drift on the machine hits both equally
                out = Path(tmp) / f"eval_{round_}_{batch}"
                start = time.perf_counter()
                result = evaluate_records(student, split.records, split.image_paths, out, batch_size=batch,
                                          max_new_tokens=args.max_new_tokens)
                seconds = time.perf_counter() - start
                rate = len(result.rows) / seconds
                rates[batch].append(rate)
                print(json.dumps({"bench": "evaluate_throughput", "round": round_, "batch_size": batch,
                                  "records": len(result.rows), "seconds": round(seconds, 2),
                                  "records_per_s": round(rate, 2), "max_new_tokens": args.max_new_tokens,
                                  "device": str(student.device)}))
        ratio = statistics.median(rates[4]) / statistics.median(rates[1])
        print(json.dumps({"bench": "evaluate_throughput", "median_records_per_s_b1": round(statistics.median(rates[1]), 2),
                          "median_records_per_s_b4": round(statistics.median(rates[4]), 2),
                          "speedup_b4_over_b1": round(ratio, 2)}))


if __name__ == "__main__":
    main()
