"""Does a box loss weight above 1 raise the student's mean IoU at an equal number of steps? (issue 16)

The smallest set-up where the student learns (the `demo-learn` preset: the tiny model, every weight trained, 600
steps on the 64 demo training records) is trained twice per seed, with the default span weights and with
``--set span_loss_weights=bbox:W``, through the CLI as a user runs it; each ``final/`` is then evaluated greedily
on the held-out demo records. One JSON line per run (well-formed 7-step outputs, mean IoU against the teacher's
box, ANLS, the last logged training and validation loss of the box span), then one summary line: each arm's mean
over the seeds and the difference (weighted - default) per seed.

    python benchmarks/span_weights.py [--weight 4] [--seeds 0 1] [--steps 600] [--n-test 48] [--max-new-tokens 512]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cli(*args: object) -> None:
    done = subprocess.run([sys.executable, "-m", "docval_sft", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"docval-sft {args[0]} failed ({done.returncode}): {(done.stderr or done.stdout)[-1500:]}")


def run_arm(demo, work: Path, seed: int, weights: str, steps: int, max_new_tokens: int) -> dict:
    d = demo.data
    run, evaluation = work / f"run-{seed}-{weights or 'default'}", work / f"eval-{seed}-{weights or 'default'}"
    start = time.perf_counter()
    cli("train", "--preset", "demo-learn", "--model", demo.model_dir, "--train-data", d.train, "--val-data", d.val,
        "--image-dir", d.image_dir, "--output-dir", run, "--seed", seed, "--max-steps", steps,
        *(["--set", f"span_loss_weights={weights}"] if weights else []))
    train_s = time.perf_counter() - start
    cli("evaluate", "--adapter", run / "final", "--test-data", d.test, "--image-dir", d.image_dir,
        "--output-dir", evaluation, "--batch-size", "8", "--max-new-tokens", max_new_tokens)
    summary = json.loads((evaluation / "evaluation_summary.json").read_text())
    log = (run / "training.log").read_text()
    # unweighted NLL means of the box span (docs/training.md): comparable between the two arms
    train_bbox = re.findall(r"^Step \d+: loss_reasoning.*\bloss_bbox = ([\d.]+)", log, re.M)
    eval_bbox = re.findall(r"\beval_loss_bbox = ([\d.]+)", log)
    return {"seed": seed, "span_loss_weights": weights or "(default: all 1)", "steps": steps,
            "compliant": round(summary["cot_compliance"], 4), "parsable": summary["n_parsable"], "n": summary["n"],
            "mean_iou": round(summary["iou"], 4), "anls_standard": round(summary["anls_standard"], 4),
            "train_loss_bbox": float(train_bbox[-1]) if train_bbox else None,
            "eval_loss_bbox": float(eval_bbox[-1]) if eval_bbox else None, "train_s": round(train_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weight", type=float, default=4.0, help="loss weight of the box span in the second arm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (data order)")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps of every run (the preset's 600)")
    parser.add_argument("--n-test", type=int, default=48, help="held-out demo records evaluated")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="generation limit (targets: 224-363 tokens)")
    args = parser.parse_args()

    from docval_sft.demo import make_demo

    weighted = f"bbox:{args.weight:g}"
    with tempfile.TemporaryDirectory(prefix="span-weights-") as tmp:
        work = Path(tmp)
        demo = make_demo(work / "demo", n_train=64, n_val=16, n_test=args.n_test, seed=0)
        rows = {}
        for seed in args.seeds:
            for weights in ("", weighted):
                rows[seed, weights] = run_arm(demo, work, seed, weights, args.steps, args.max_new_tokens)
                print(json.dumps(rows[seed, weights]), flush=True)
    default = [rows[s, ""]["mean_iou"] for s in args.seeds]
    boxed = [rows[s, weighted]["mean_iou"] for s in args.seeds]
    print(json.dumps({"summary": f"mean IoU, span_loss_weights={weighted} vs default, {args.steps} steps",
                      "seeds": args.seeds, "n_test": args.n_test,
                      "mean_iou_default": round(statistics.mean(default), 4),
                      "mean_iou_weighted": round(statistics.mean(boxed), 4),
                      "difference_per_seed": [round(b - a, 4) for a, b in zip(default, boxed)],
                      "compliant_default": round(statistics.mean(rows[s, ""]["compliant"] for s in args.seeds), 4),
                      "compliant_weighted": round(statistics.mean(rows[s, weighted]["compliant"]
                                                                  for s in args.seeds), 4)}))


if __name__ == "__main__":
    main()
