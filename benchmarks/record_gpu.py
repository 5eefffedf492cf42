"""Record GPU measurements from `benchmarks/gpu.py --out gpu.jsonl` into docval_sft/performance.json, which
`docval-sft presets` shows as a column. Keeps, per preset, the measurement at the realistic 760-token length
(or the shortest measured), with its device and date, and the estimated wall time of the Phase B1 guide's run
(1,654 records x 3 epochs, from the preset's own step plan).

    python benchmarks/record_gpu.py gpu.jsonl [--date 2026-12-01]
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

PERFORMANCE = Path(__file__).resolve().parent.parent / "docval_sft" / "performance.json"
GUIDE_RECORDS = 1654


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("jsonl", type=Path)
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    parser.add_argument("--file", type=Path, default=PERFORMANCE, help="the table to update")
    args = parser.parse_args()

    from docval_sft.build import step_plan
    from docval_sft.presets import get_preset

    table = json.loads(args.file.read_text()) if args.file.is_file() else {}
    rows = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    # a preset as shipped: not a NAME:field=value variant, not the transformers-default vision-grad comparison
    measured = [r for r in rows if r.get("s_per_step") and r.get("scale") == "full"
                and r.get("vision_grad", "library") == "library" and not r.get("overrides")]
    for preset_name in sorted({r["preset"] for r in measured}):
        mine = sorted((r for r in measured if r["preset"] == preset_name), key=lambda r: abs(r["seq_len"] - 760))
        r = mine[0]
        steps = step_plan(get_preset(preset_name), GUIDE_RECORDS, n_processes=1).total_steps
        table[preset_name] = {
            "date": args.date, "device": r["device"], "seq_len": r["seq_len"], "s_per_step": round(r["s_per_step"], 3),
            "tokens_per_s": round(r["tokens_per_s"]), "mfu": round(r["mfu"], 4) if r.get("mfu") else None,
            "peak_gpu_mem_gib": r.get("peak_gpu_mem_gib"),
            "guide_run_hours": round(steps * r["s_per_step"] / 3600, 2), "guide_run_steps": steps,
        }
        print(preset_name, table[preset_name])
    args.file.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
