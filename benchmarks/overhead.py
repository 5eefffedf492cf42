"""What does docval-sft's builder cost over a plain, hand-written TRL script? (Goal: time ratio <= 1.03.)

Both train the same tiny model on the same demo records with the same seed and settings (the `demo` preset's:
LoRA r16 on the language model, batch 4, lr 1e-2, fp32 on CPU); runs alternate A, B, A, B, ... in one process so
drift on the machine hits both. Timed: building the trainer + ``trainer.train()``. Not timed: the data checks
that only docval-sft does (token counts of every record), reported on their own line.

    python benchmarks/overhead.py [--steps 30] [--rounds 3]

``--span-loss`` compares docval-sft with and without the per-span loss instead (docs/training.md): the same
builder on the same records, once from a dataset without the ``spans`` column (TRL's loss and metrics only), once
with it (span ids in every batch, per-span sums in the loss, their reduction at each logging step); alternated
rounds, timed per optimizer step (``trainer.train()`` only / steps), ratio with / without. The spans themselves
are computed once per record before training: that cost is reported on its own line.

    OMP_NUM_THREADS=1 python benchmarks/overhead.py --span-loss [--steps 30] [--rounds 6]

(One torch thread: on a shared machine, torch's threads waiting for each other made the same run's steps swing 2x.)
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


TRAIN_SECONDS: list[float] = []  # trainer.train() alone, per docval() call: wall seconds
TRAIN_CPU_SECONDS: list[float] = []  # and CPU seconds of this process (all threads): robust to a busy machine


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
    train_start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()
    TRAIN_SECONDS.append(time.perf_counter() - train_start)
    TRAIN_CPU_SECONDS.append(time.process_time() - cpu_start)
    return time.perf_counter() - start


SPAN_CODE_SECONDS = [0.0]  # time inside the per-span code (collator's span ids, forward hook, log reduction)


def time_span_code() -> None:
    """Time what the per-span loss adds inside each step, directly: SpanCollator minus TRL's collator inside it, the
    forward hook, the reduction at logging steps (on the CPU every op is synchronous, so wall time is its cost)."""
    from docval_sft import build, spans

    class TimedSpanCollator(spans.SpanCollator):
        def __call__(self, examples):
            inner, inner_s = self.collator, [0.0]

            def timed(batch):
                start = time.perf_counter()
                out = inner(batch)
                inner_s[0] += time.perf_counter() - start
                return out

            self.collator, start = timed, time.perf_counter()
            try:
                return super().__call__(examples)
            finally:
                self.collator = inner
                SPAN_CODE_SECONDS[0] += time.perf_counter() - start - inner_s[0]

    original = build.trainer_class

    def timed_trainer_class():
        base = original()

        class Timed(base):
            def _span_hook(self, *args):
                start = time.perf_counter()
                try:
                    return super()._span_hook(*args)
                finally:
                    SPAN_CODE_SECONDS[0] += time.perf_counter() - start

            def span_losses(self, *args, **kwargs):
                start = time.perf_counter()
                try:
                    return super().span_losses(*args, **kwargs)
                finally:
                    SPAN_CODE_SECONDS[0] += time.perf_counter() - start

        return Timed

    spans.SpanCollator = TimedSpanCollator
    build.trainer_class = timed_trainer_class


def span_loss_rounds(model_dir: Path, split, root: Path, steps: int, rounds: int) -> None:
    """docval-sft without / with the spans column, alternated A B B A ...; ratio of the median seconds per
    optimizer step, and the time spent inside the per-span code as a fraction of the step."""
    from transformers import AutoProcessor

    from docval_sft.convert import to_dataset
    from docval_sft.spans import record_spans

    time_span_code()

    processor = AutoProcessor.from_pretrained(model_dir)
    start = time.perf_counter()
    spans = [record_spans(r, processor, "pixel", s) for r, s in zip(split.records, split.image_sizes, strict=True)]
    print(json.dumps({"bench": "overhead", "docval_only": "spans of every record (once, before training)",
                      "records": len(spans), "seconds": round(time.perf_counter() - start, 3)}))
    datasets = {"without_spans": to_dataset(split.records, split.image_paths, "pixel", split.image_sizes),
                "with_spans": to_dataset(split.records, split.image_paths, "pixel", split.image_sizes, spans=spans)}
    per_step: dict[str, list[float]] = {name: [] for name in datasets}
    cpu_per_step: dict[str, list[float]] = {name: [] for name in datasets}
    span_fraction: list[float] = []
    for r in range(rounds):
        for name in (list(datasets) if r % 2 == 0 else list(datasets)[::-1]):  # A B, B A: no order bias
            SPAN_CODE_SECONDS[0] = 0.0
            seconds = docval(model_dir, datasets[name], root / f"{name}_{r}", steps)
            per_step[name].append(TRAIN_SECONDS[-1] / steps)
            cpu_per_step[name].append(TRAIN_CPU_SECONDS[-1] / steps)
            row = {"bench": "overhead", "round": r, "variant": name, "steps": steps, "seconds": round(seconds, 3),
                   "train_s_per_step": round(per_step[name][-1], 4),
                   "train_cpu_s_per_step": round(cpu_per_step[name][-1], 4)}
            if name == "with_spans":
                span_fraction.append(SPAN_CODE_SECONDS[0] / TRAIN_SECONDS[-1])
                row["span_code_s_per_step"] = round(SPAN_CODE_SECONDS[0] / steps, 5)
                row["span_code_fraction"] = round(span_fraction[-1], 5)
            print(json.dumps(row))
    with_s, without_s = statistics.median(per_step["with_spans"]), statistics.median(per_step["without_spans"])
    with_cpu, without_cpu = (statistics.median(cpu_per_step["with_spans"]),
                             statistics.median(cpu_per_step["without_spans"]))
    ratio, cpu_ratio = with_s / without_s, with_cpu / without_cpu
    print(json.dumps({"bench": "overhead", "median_s_per_step_without_spans": round(without_s, 4),
                      "median_s_per_step_with_spans": round(with_s, 4), "ratio": round(ratio, 3),
                      "median_cpu_s_per_step_without_spans": round(without_cpu, 4),
                      "median_cpu_s_per_step_with_spans": round(with_cpu, 4), "cpu_ratio": round(cpu_ratio, 3),
                      "median_span_code_fraction": round(statistics.median(span_fraction), 5),
                      "goal": 1.03, "met": ratio <= 1.03}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--span-loss", action="store_true",
                        help="compare docval-sft with and without the per-span loss instead of plain TRL")
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
        if args.span_loss:
            span_loss_rounds(demo.model_dir, split, root, args.steps, args.rounds)
            return
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
