"""The CPU benchmarks run in CI-sized form: each prints the JSON lines its docstring promises, with consistent content.

Timings at this size mean nothing and are not asserted; docs/performance.md has the full-size figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(name: str, *args: str) -> list[dict]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # JSON lines only: the plain TRL script of overhead.py also prints the Trainer's own log dicts (Python reprs)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"')]


def test_overhead_alternates_both_trainers_and_reports_the_ratio() -> None:
    lines = run("overhead.py", "--steps", "2", "--rounds", "2")
    rounds = [r for r in lines if "round" in r]
    assert [(r["round"], r["variant"]) for r in rounds] == [
        (0, "plain_trl"), (0, "docval_sft"), (1, "plain_trl"), (1, "docval_sft")]
    assert all(r["seconds"] > 0 and r["steps"] == 2 for r in rounds)
    summary = lines[-1]
    assert summary["ratio"] == pytest.approx(summary["median_docval_sft_s"] / summary["median_plain_trl_s"], abs=2e-3)
    assert lines[0]["docval_only"] and lines[0]["records"] == 64


def test_data_reports_rate_and_peak_rss_per_size() -> None:
    lines = run("data.py", "--sizes", "8", "24")
    sizes = [r for r in lines if "records_per_s" in r]
    assert [r["records"] for r in sizes] == [8, 24]
    assert all(r["records_per_s"] > 0 and r["peak_rss_mib"] > r["rss_ready_mib"] > 0 for r in sizes)
    growth = lines[-1]
    assert growth["records"] == [8, 24]
    assert growth["peak_rss_growth_mib"] == pytest.approx(sizes[1]["peak_rss_mib"] - sizes[0]["peak_rss_mib"], abs=0.1)


def test_dataloader_measures_each_strategy_and_worker_count() -> None:
    lines = run("dataloader.py", "--records", "32", "--workers", "0", "1", "--rounds", "1", "--grad-accum", "1",
                "--count-workers", "0", "2")
    counts, lengths, rows = lines[:2], lines[2], lines[3:]
    assert [(c["event"], c["workers"], c["records"]) for c in counts] == [("token_counts", 0, 32), ("token_counts", 2, 32)]
    assert lengths["event"] == "lengths" and lengths["records"] == 32 and lengths["image_tokens"] == 256
    assert [(r["strategy"], r["workers"]) for r in rows] == [
        ("random", 0), ("random", 1), ("group_by_length", 0), ("group_by_length", 1)]
    assert {r["samples"] for r in rows} == {32} and len({r["real_tokens"] for r in rows}) == 1  # same records
    random_pad = {r["padding_fraction"] for r in rows if r["strategy"] == "random"}
    grouped_pad = {r["padding_fraction"] for r in rows if r["strategy"] == "group_by_length"}
    assert len(random_pad) == len(grouped_pad) == 1  # workers change the speed, not the batches
    assert grouped_pad.pop() < random_pad.pop()


def test_validate_data_benchmark_reports_each_size() -> None:
    lines = run("validate_data.py", "--sizes", "8", "16")
    rows = [r for r in lines if "peak_rss_mib" in r and "records" in r and r.get("step") != "render"]
    assert [r["records"] for r in rows][:2] == [8, 16] and all(r["ok"] for r in rows[:2])


def test_evaluate_throughput_compares_batch_sizes() -> None:
    lines = run("evaluate_throughput.py", "--records", "4", "--max-new-tokens", "4", "--rounds", "1")
    assert {r["batch_size"] for r in lines if "batch_size" in r} == {1, 4}
    assert lines[-1]["median_records_per_s_b1"] > 0


def test_pan_and_scan_cost_counts_crop_tokens_per_dataset() -> None:
    (report,) = run("pan_and_scan_cost.py", "--n-train", "10", "--timed", "2")
    assert report["records"] == 10 and sum(d["records"] for d in report["per_dataset"].values()) == 10
    for d in report["per_dataset"].values():
        assert d["image_tokens_mean_off"] == 256  # one 896x896 view, Gemma 3's 256 tokens
        assert d["image_tokens_mean_on"] == pytest.approx(256 * (1 + d["crops_mean"]))
        assert d["total_tokens_mean_on"] - d["total_tokens_mean_off"] >= 256 * d["crops_mean"]
    # the pages: 1700x2200 -> round(1.29) = 2 strips of 1100 rows; 600x2400 -> 4 squares of 600
    assert report["reference_pages"]["docvqa_1700x2200"]["crop_boxes"] == [[0, 0, 1700, 1100], [0, 1100, 1700, 1100]]
    assert report["reference_pages"]["receipt_600x2400"]["image_tokens"] == 5 * 256


def test_span_weights_trains_both_arms_per_seed_and_compares_mean_iou() -> None:
    lines = run("span_weights.py", "--steps", "3", "--seeds", "0", "--n-test", "2", "--max-new-tokens", "8",
                "--weight", "3")
    runs, summary = lines[:-1], lines[-1]
    assert [(r["seed"], r["span_loss_weights"]) for r in runs] == [(0, "(default: all 1)"), (0, "bbox:3")]
    assert all(r["steps"] == 3 and r["n"] == 2 and 0 <= r["mean_iou"] <= 1 for r in runs)
    assert summary["mean_iou_default"] == runs[0]["mean_iou"] and summary["mean_iou_weighted"] == runs[1]["mean_iou"]
    assert summary["difference_per_seed"] == [round(runs[1]["mean_iou"] - runs[0]["mean_iou"], 4)]
