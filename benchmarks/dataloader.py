"""The training dataloader as the Trainer builds it: samples/s, CPU time per sample and padding, per switch.

    python benchmarks/dataloader.py [--records 256] [--batch-size 4] [--workers 0 2]
                                    [--strategies random group_by_length] [--image-size 896 --image-tokens 256]

Demo documents (rendered here, 300-1200 px pages) go through ``docval_sft.build.build_trainer`` exactly as a run
builds it; ``trainer.get_train_dataloader()`` (the preset's sampler, ``dataloader_num_workers`` worker processes,
TRL's vision collator: image decoding, Gemma 3's image processor, chat template, tokenising, label masking) is then
iterated once over every record, timed. The processor has Gemma 3's image geometry by default (pages resized to
896 x 896, 256 image tokens per image) with the tiny model's tokenizer; no model forward runs.

First, the check ``docval-sft train`` runs before training (decode every page, count every record's tokens with
TRL's collator) with each ``--count-workers`` value: ``"event": "token_counts"`` lines with ``ms_per_record``.
Then one JSON line per (round, strategy, workers), the configurations alternated ``--rounds`` times (the time includes
starting the worker processes, once per pass): ``ms_per_sample`` (wall time / samples), ``samples_per_s``,
``padding_fraction`` (pad positions / all positions of the padded batches; what a GPU computes for nothing) and the
token counts. The first line (``"event": "lengths"``) gives the token-count distribution of the records.

Why it matters: with ``dataloader_num_workers=0`` the training process builds every batch itself between optimizer
steps; ``ms_per_sample x samples per optimizer step`` is CPU time a GPU step may wait for. Workers build the next
batches in parallel processes (here: 2 CPU cores, so at most ~2x).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4, help="per_device_train_batch_size")
    parser.add_argument("--grad-accum", type=int, default=4, help="gradient_accumulation_steps (sets the "
                        "group_by_length mega-batch: batch x grad-accum x 50 records)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--strategies", nargs="+", default=["random", "group_by_length"])
    parser.add_argument("--rounds", type=int, default=2, help="passes over all configurations, alternated")
    parser.add_argument("--count-workers", type=int, nargs="+", default=[0, 2, 0, 2],
                        help="worker processes of the token-count check before training, measured in this order")
    parser.add_argument("--image-size", type=int, default=896, help="processor resize (Gemma 3: 896)")
    parser.add_argument("--image-tokens", type=int, default=256, help="image tokens per image (Gemma 3: 256)")
    args = parser.parse_args()

    import datasets
    import torch

    from docval_sft.build import build_trainer, load_model, quiet_libraries
    from docval_sft.convert import to_dataset
    from docval_sft.documents import make_records
    from docval_sft.lengths import TokenCounter, percentiles
    from docval_sft.presets import get_preset
    from docval_sft.tiny import build_tiny_model, build_tiny_processor
    from docval_sft.validate import prepare_split

    quiet_libraries()
    datasets.disable_progress_bars()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "train.json"
        data.write_text(json.dumps(make_records(args.records, root / "images", seed=0)))
        model_dir = build_tiny_model(root / "tiny")
        processor = build_tiny_processor(root / "processor", image_size=args.image_size,
                                         image_seq_length=args.image_tokens)
        counter = TokenCounter(processor)
        for workers in args.count_workers:  # the data check before training: decode + count every record
            start = time.perf_counter()
            split = prepare_split("train", data, root / "images", counter=counter, workers=workers)
            print(json.dumps({"bench": "dataloader", "event": "token_counts", "workers": workers,
                              "records": len(split.records),
                              "ms_per_record": round(1000 * (time.perf_counter() - start) / len(split.records), 1)}),
                  flush=True)
        lengths = [c.total for c in split.token_counts]
        print(json.dumps({"bench": "dataloader", "event": "lengths", "records": len(lengths),
                          "image_size": args.image_size, "image_tokens": args.image_tokens,
                          "total_tokens": {**percentiles(lengths, (0, 50, 90, 100)),
                                           "mean": round(sum(lengths) / len(lengths), 1)}}), flush=True)
        dataset = to_dataset(split.records, split.image_paths, lengths=lengths)
        configs = [(s, w) for s in args.strategies for w in args.workers]
        for round_ in range(1, args.rounds + 1):
            for strategy, workers in configs:
                preset = get_preset("demo").with_overrides({
                    "model_name_or_path": str(model_dir), "per_device_train_batch_size": args.batch_size,
                    "gradient_accumulation_steps": args.grad_accum, "dataloader_num_workers": workers,
                    "train_sampling_strategy": strategy})
                trainer = build_trainer(preset, load_model(preset), processor, dataset, None,
                                        str(root / "out"), report_to=[])
                loader = trainer.get_train_dataloader()
                real = padded = samples = 0
                start = time.perf_counter()
                for batch in loader:
                    mask = batch["attention_mask"]
                    real, padded, samples = real + int(mask.sum()), padded + mask.numel(), samples + len(mask)
                seconds = time.perf_counter() - start
                del loader, trainer
                print(json.dumps({
                    "bench": "dataloader", "round": round_, "strategy": strategy, "workers": workers,
                    "batch_size": args.batch_size, "samples": samples, "seconds": round(seconds, 2),
                    "ms_per_sample": round(1000 * seconds / samples, 1), "samples_per_s": round(samples / seconds, 1),
                    "real_tokens": real, "padded_positions": padded,
                    "padding_fraction": round(1 - real / padded, 4)}), flush=True)


if __name__ == "__main__":
    main()
