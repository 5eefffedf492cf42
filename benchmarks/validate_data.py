"""Time and peak memory of `validate-data` on demo records, at two dataset sizes (one JSON line each).

Peak RSS must not grow with the number of images (each image is decoded, checked, released). Every size runs in
a fresh process so its peak RSS is its own.

    python benchmarks/validate_data.py [--sizes 200 2000] [--model]   # --model also counts tokens
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


def child(train: str, image_dir: str, model: str | None) -> None:
    """Run the real CLI entry point in this process and report wall time and peak RSS."""
    from typer.testing import CliRunner

    from docval_sft.cli import app

    args = ["validate-data", "--train-data", train, "--image-dir", image_dir, "--json"]
    if model:
        args += ["--model", model, "--max-length", "4096"]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = CliRunner().invoke(app, args)
    seconds = time.perf_counter() - start
    report = json.loads(result.stdout)
    print(json.dumps({"records": report["splits"]["train"]["records"], "ok": report["ok"], "seconds": seconds,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_after_imports_mib": rss_before / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--model", action="store_true", help="also count tokens with the tiny model's processor")
    parser.add_argument("--child", nargs=3, metavar=("TRAIN", "IMAGES", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], None if args.child[2] == "-" else args.child[2])
        return

    from docval_sft.documents import make_records

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        records = make_records(max(args.sizes), root / "images", seed=0)
        print(json.dumps({"bench": "validate_data", "step": "render", "records": len(records),
                          "seconds": round(time.perf_counter() - start, 2)}))
        model = "-"
        if args.model:
            from docval_sft.tiny import build_tiny_model

            model = str(build_tiny_model(root / "tiny"))
        for n in args.sizes:
            data = root / f"train_{n}.json"
            data.write_text(json.dumps(records[:n]))
            env = {**os.environ, "HF_HUB_OFFLINE": "1"}
            out = subprocess.run([sys.executable, __file__, "--child", str(data), str(root / "images"), model],
                                 capture_output=True, text=True, env=env, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row = {"bench": "validate_data", "with_token_counts": args.model, **row,
                   "records_per_s": round(row["records"] / row["seconds"], 1)}
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}))


if __name__ == "__main__":
    main()
