"""What does docval-sft's builder cost over a plain, hand-written TRL script? (Goal: time ratio <= 1.03.)

Both train the same tiny model on the same demo records with the same seed and settings (the `demo` preset's:
LoRA r16 on the language model, batch 4, lr 1e-2, fp32 on CPU); runs alternate A, B, A, B, ... in one process so
drift on the machine hits both. Timed: building the trainer + ``trainer.train()``. Not timed: the data checks
that only docval-sft does (token counts of every record), reported on their own line.

    python benchmarks/overhead.py [--steps 30] [--rounds 3]
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


def plain_trl(model_dir: Path, dataset, output_dir: Path, steps: int) -> float:
    """The script a user would write by hand with TRL's documented API."""
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    start = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype="float32", attn_implementation="sdpa")
    processor = AutoProcessor.from_pretrained(model_dir)
    args = SFTConfig(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=4, gradient_accumulation_steps=1,
        learning_rate=1e-2, lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=0.01, max_grad_norm=1.0,
        bf16=False, gradient_checkpointing=False, max_length=None, seed=42, use_cpu=True, logging_steps=5,
        save_strategy="no", report_to="none", disable_tqdm=True,
    )
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor, peft_config=peft)
    trainer.train()
    return time.perf_counter() - start


def docval(model_dir: Path, dataset, output_dir: Path, steps: int) -> float:
    """The same run through docval-sft's builder (preset -> configs -> model -> trainer with our callbacks)."""
    from docval_sft.build import build_trainer, load_model, load_processor
    from docval_sft.callbacks import InterruptCallback, RichProgressCallback, TrainingLogCallback
    from docval_sft.presets import get_preset

    preset = get_preset("demo").with_overrides({
        "model_name_or_path": str(model_dir), "max_steps": steps, "save_steps": 10**6, "eval_steps": 10**6})
    start = time.perf_counter()
    model, processor = load_model(preset), load_processor(preset)
    output_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [TrainingLogCallback(output_dir / "training.log"), RichProgressCallback(4, enabled=False),
                 InterruptCallback()]
    trainer = build_trainer(preset, model, processor, dataset, None, str(output_dir), report_to=[],
                            callbacks=callbacks)
    trainer.args.save_strategy = "no"  # as the plain script: measure training, not checkpoint writing
    trainer.train()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import datasets
    import transformers

    from docval_sft.convert import to_dataset
    from docval_sft.demo import make_demo
    from docval_sft.lengths import TokenCounter
    from docval_sft.validate import prepare_split

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        demo = make_demo(root / "demo", n_train=64, n_val=4, n_test=4)
        from transformers import AutoProcessor

        start = time.perf_counter()
        split = prepare_split("train", demo.data.train, demo.data.image_dir,
                              counter=TokenCounter(AutoProcessor.from_pretrained(demo.model_dir)), max_length=1024)
        print(json.dumps({"bench": "overhead", "docval_only": "data checks with token counts",
                          "records": len(split.records), "seconds": round(time.perf_counter() - start, 2)}))
        dataset = to_dataset(split.records, split.image_paths, "pixel", split.image_sizes)
        times: dict[str, list[float]] = {"plain_trl": [], "docval_sft": []}
        for r in range(args.rounds):
            for name, fn in (("plain_trl", plain_trl), ("docval_sft", docval)):
                seconds = fn(demo.model_dir, dataset, root / f"{name}_{r}", args.steps)
                times[name].append(seconds)
                print(json.dumps({"bench": "overhead", "round": r, "variant": name, "steps": args.steps,
                                  "seconds": round(seconds, 3)}))
        ratio = statistics.median(times["docval_sft"]) / statistics.median(times["plain_trl"])
        print(json.dumps({"bench": "overhead", "median_plain_trl_s": round(statistics.median(times["plain_trl"]), 3),
                          "median_docval_sft_s": round(statistics.median(times["docval_sft"]), 3),
                          "ratio": round(ratio, 3), "goal": 1.03, "met": ratio <= 1.03}))


if __name__ == "__main__":
    main()
