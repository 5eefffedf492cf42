"""What training actually uses, taken from the trainer that `docval-sft train` builds (issue 13): the batches of its
own ``get_train_dataloader()`` and the optimizer and schedule it creates. The expectations are written here from the
records' raw fields, the byte layout of docval_format.md section 2 and the formulas of the schedules, never with
the library's own renderer or config builder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from docval_sft.cli import app


class _Built(Exception):
    """Raised right after the trainer is built, so nothing trains."""


def built_trainer(demo: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> Any:
    """The SFTTrainer of `docval-sft train --preset demo ...` (the command's whole set-up path: validation, dataset,
    model, builder), caught before ``train()``."""
    import docval_sft.build

    built: dict[str, Any] = {}
    real = docval_sft.build.build_trainer

    def spy(*args: Any, **kwargs: Any) -> Any:
        built["trainer"] = real(*args, **kwargs)
        raise _Built

    monkeypatch.setattr(docval_sft.build, "build_trainer", spy)
    d = demo.data
    result = CliRunner().invoke(app, ["train", "--preset", "demo", "--model", str(demo.model_dir), "--train-data",
                                      str(d.train), "--image-dir", str(d.image_dir), "--output-dir",
                                      str(tmp_path / "run"), *extra])
    assert "trainer" in built, result.output
    return built["trainer"]


def expected_target(raw: dict[str, Any]) -> str:
    """docval_format.md section 2, by hand: REASONING, the seven steps, a blank line, ANSWER, BBOX (list repr)."""
    steps = "\n".join(f"Step {n}: {step}" for n, step in enumerate(raw["cot_steps"], start=1))
    return f"REASONING:\n{steps}\n\nANSWER: {raw['answer_pred']}\nBBOX: {raw['bbox_pred']}"


def test_every_batch_of_an_epoch_labels_exactly_the_target_and_end_of_turn(demo, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """One epoch of the trainer's own dataloader, padded batches of 4: each row's loss-carrying tokens decode to its
    record's target + "<end_of_turn>\\n", start right after "<start_of_turn>model\\n" of the row that asks that
    record's question, and every record of the file appears exactly once. Fails if the prompt, the image or the
    padding carries loss (completion_only_loss off) or the end of turn does not (the model would never stop)."""
    trainer = built_trainer(demo, tmp_path, monkeypatch, "--set", "per_device_train_batch_size=4")
    tok = trainer.processing_class.tokenizer
    raws = json.loads(Path(demo.data.train).read_text(encoding="utf-8"))
    by_target = {expected_target(r): r for r in raws}
    assert len(by_target) == len(raws)
    seen: list[str] = []
    padded = 0
    for batch in trainer.get_train_dataloader():
        padded += int((batch["attention_mask"] == 0).sum())
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
            labelled = (labels != -100).nonzero().flatten()
            first, last = int(labelled[0]), int(labelled[-1])
            assert torch.equal(labelled, torch.arange(first, last + 1))  # one contiguous span
            assert torch.equal(labels[first:last + 1], ids[first:last + 1])
            text = tok.decode(ids[first:last + 1])
            assert text.endswith("<end_of_turn>\n"), text[-80:]
            target = text.removesuffix("<end_of_turn>\n")
            assert target in by_target, target[:200]
            prompt = tok.decode(ids[:first][mask[:first].bool()])
            assert prompt.endswith("<start_of_turn>model\n")
            assert by_target[target]["question"] in prompt
            assert not bool(mask[last + 1:].any())  # after the end of turn only padding, and it carries no loss
            seen.append(target)
    assert sorted(seen) == sorted(by_target)
    assert padded > 0  # the batches were padded, so the padding really was checked


def test_schedule_warmup_decay_clipping_seed_and_optimizer_reach_the_trainer(demo, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The optimizer and LR schedule the trainer creates follow the preset's fields, checked by their effect: the
    learning rate of each step against the schedule's formula, weight decay per parameter group, the clipping norm
    and the seed. Each field set here differs from the demo preset's value."""
    lr, steps, ratio = 1e-3, 20, 0.25
    trainer = built_trainer(demo, tmp_path, monkeypatch, "--lr", str(lr), "--max-steps", str(steps), "--seed", "7",
                            "--set", "lr_scheduler_type=linear", "--set", f"warmup_ratio={ratio}",
                            "--set", "weight_decay=0.3", "--set", "max_grad_norm=0.25", "--set", "optim=sgd")
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    warmup = math.ceil(ratio * steps)  # transformers: a warmup given as a ratio is rounded up to whole steps
    rates = []
    for _ in range(steps):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    linear = [lr * s / warmup if s < warmup else lr * (steps - s) / (steps - warmup) for s in range(steps)]
    assert rates == pytest.approx(linear, rel=1e-6)
    assert type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer) \
        is torch.optim.SGD
    decays = sorted({group["weight_decay"] for group in trainer.optimizer.param_groups})
    assert decays == [0.0, 0.3]  # biases and norms are not decayed
    assert (trainer.args.max_grad_norm, trainer.args.seed) == (0.25, 7)
