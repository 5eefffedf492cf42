"""Spans of the target (spans.py), the per-span loss and span weights (build.DocvalTrainer), preview's spans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from docval_sft.cli import app
from docval_sft.convert import record_parts, to_dataset, to_example
from docval_sft.errors import DocvalError, Location
from docval_sft.format import format_bbox
from docval_sft.lengths import vision_collator
from docval_sft.records import PhaseARecord, load_records
from docval_sft.spans import (
    ANSWER, BBOX, EOS, FORMAT, REASONING, SPAN_NAMES, SpanCollator, parse_weights, record_spans, span_counts,
)

runner = CliRunner()


def record(steps: list[str], answer: str, box: list[float]) -> PhaseARecord:
    return PhaseARecord(image_id="x_1", image_file="x.png", question="What is the total?", cot_steps=tuple(steps),
                        answer_pred=answer, bbox_pred=tuple(box), location=Location(Path("t.json"), 0))  # type: ignore[arg-type]


EDGE_RECORDS = {
    # \u2028 and \x1c are legal inside a step (the renderer and parser split on "\n" only) but break str.splitlines
    "multi_line_steps": record(["Find the line\u2028that says TOTAL", "Its value\x1cis 12.50 at [10, 20, 60, 40].",
                                "So the total is 12.50."], "12.50", [10, 20, 60, 40]),
    "unicode": record(["Le montant dû est «\u00a012,50\u00a0€\u00a0»", "合計 は 12.50 です 🧾", "e\u0301 (combining)"],
                      "12,50\u00a0€ 🧾", [10.5, 20.25, 60.0, 40.0]),
    "empty_answer": record(["Nothing answers the question.", "Keep the header box."], "", [0, 0, 100, 100]),
}


@pytest.mark.parametrize("name", list(EDGE_RECORDS))
@pytest.mark.parametrize("bbox_format", ["pixel", "norm1000"])
def test_span_ranges_hold_exactly_their_part(processor, name: str, bbox_format: str) -> None:
    rec, size = EDGE_RECORDS[name], (200, 100)
    spans = record_spans(rec, processor, bbox_format, size)  # type: ignore[arg-type]
    steps, answer, box = record_parts(rec, bbox_format, size)  # type: ignore[arg-type]
    # the same tokens TRL's collator labels: collate the record and read the labels through SpanCollator
    example = {**to_example(rec, Image.new("RGB", size, "white"), bbox_format, size), "spans": spans}  # type: ignore[arg-type]
    batch = SpanCollator(vision_collator(processor))([example])
    labels, ids = batch["labels"][0], batch["span_ids"][0]
    labelled = labels != -100
    assert spans["n_tokens"] == int(labelled.sum()) and bool(((ids >= 0) == labelled).all())
    token_ids = labels[labelled].tolist()
    decode = processor.tokenizer.decode

    def text(a: int, b: int) -> str:
        return decode(token_ids[a:b])

    assert len(spans["steps"]) == len(steps)
    for (a, b), step in zip(spans["steps"], steps, strict=True):
        assert text(a, b).strip() == step.strip()  # a step token may carry the space after "Step N:"
    a, b = spans["answer"]
    assert text(a, b).strip() == answer and (a == b) == (answer == "")
    a, b = spans["bbox"]
    assert text(a, b).strip() == format_bbox(box)
    if bbox_format == "norm1000":
        assert format_bbox(box) != format_bbox(rec.bbox_pred)  # the grid box, not the pixel one
    a, b = spans["eos"]
    assert text(a, b) == "<end_of_turn>\n" and b == spans["n_tokens"]
    # everything else is format: markers, step labels, line breaks
    rest = "".join(decode([t]) for t, i in zip(token_ids, ids[labelled].tolist(), strict=True) if i == FORMAT)
    assert rest.replace(" ", "").replace("\n", "") == "REASONING:" + "".join(
        f"Step{i}:" for i in range(1, len(steps) + 1)) + "ANSWER:BBOX:"
    assert sum(span_counts(spans).values()) == spans["n_tokens"]
    # the collator's span ids are the same partition
    for code, name_ in enumerate(SPAN_NAMES):
        assert int((ids == code).sum()) == span_counts(spans)[name_]


def test_collator_refuses_spans_of_another_format(processor) -> None:
    rec = EDGE_RECORDS["unicode"]
    spans = record_spans(rec, processor, "pixel", (200, 100))
    example = {**to_example(rec, Image.new("RGB", (200, 100)), "norm1000", (200, 100)), "spans": spans}
    with pytest.raises(ValueError, match="labeled tokens but its spans cover"):
        SpanCollator(vision_collator(processor))([example])


def test_parse_weights_and_the_preset_field() -> None:
    from docval_sft.presets import get_preset

    assert parse_weights("") == dict.fromkeys(SPAN_NAMES, 1.0)
    assert parse_weights("answer:2, bbox:4") == {**dict.fromkeys(SPAN_NAMES, 1.0), "answer": 2.0, "bbox": 4.0}
    for bad in ("box:2", "bbox=2", "bbox:x", "bbox:-1", "bbox:nan",
                "reasoning:0,answer:0,bbox:0,eos:0,format:0"):
        with pytest.raises(ValueError):
            parse_weights(bad)
    preset = get_preset("demo").with_overrides({"span_loss_weights": "answer:2,bbox:4"}, source="--set")
    assert preset.to_dict()["span_loss_weights"] == "answer:2,bbox:4"  # training_config.json's "preset"
    with pytest.raises(DocvalError, match="span_loss_weights"):
        get_preset("demo").with_overrides({"span_loss_weights": "bbox:-4"}, source="--set")


# ---------------------------------------------------------------- the trainer: identity, bit-identity, weights

@pytest.fixture(scope="module")
def span_trainer(demo, processor, tmp_path_factory: pytest.TempPathFactory):
    """The demo preset's trainer on 8 records with spans (gradient accumulation over 2 batches of 4)."""
    from docval_sft.build import build_trainer, load_model
    from docval_sft.presets import get_preset
    from docval_sft.validate import prepare_split

    preset = get_preset("demo").with_overrides({"model_name_or_path": str(demo.model_dir), "max_steps": 1,
                                                "gradient_accumulation_steps": 2})
    split = prepare_split("train", demo.data.train, demo.data.image_dir)
    records, paths, sizes = split.records[:8], split.image_paths[:8], split.image_sizes[:8]
    spans = [record_spans(r, processor, "pixel", s) for r, s in zip(records, sizes, strict=True)]
    dataset = to_dataset(records, paths, "pixel", sizes, spans=spans)
    trainer = build_trainer(preset, load_model(preset), processor, dataset, None,
                            str(tmp_path_factory.mktemp("spantrainer")), report_to=[])
    batches = [trainer._prepare_inputs(b) for b in trainer.get_train_dataloader()]
    trainer.model.train()
    return trainer, batches


def _items(batches: list[dict]) -> torch.Tensor:
    """num_items_in_batch as the Trainer counts it for one optimizer step."""
    return sum((b["labels"][:, 1:] != -100).sum() for b in batches)  # type: ignore[return-value]


def test_span_losses_combine_back_to_the_loss(span_trainer) -> None:
    trainer, batches = span_trainer
    assert "span_ids" in batches[0] and len(batches) == 2  # the column survived to the trainer's own dataloader
    n = _items(batches)
    trainer._span_stats.clear()
    with torch.no_grad():  # one optimizer step of 2 micro-batches, summed as the Trainer sums tr_loss
        loss = sum(trainer.compute_loss(trainer.model, dict(b), num_items_in_batch=n) for b in batches)
    stats = trainer._span_stats["train"].clone()
    losses = trainer.span_losses("train")
    assert set(losses) == {f"loss_{s}" for s in SPAN_NAMES} and "train" not in trainer._span_stats
    counts = stats[1]
    # the spans cover every labelled token once
    assert float(counts.sum() * n) == pytest.approx(float(n), rel=1e-6)
    combined = sum(float(counts[k]) * losses[f"loss_{name}"] for k, name in enumerate(SPAN_NAMES)) / float(
        counts.sum())
    assert combined == pytest.approx(float(loss), rel=1e-5)
    assert losses["loss_bbox"] != pytest.approx(losses["loss_reasoning"], rel=1e-3)  # they are not all the mean
    # each span's loss is the mean NLL of its own tokens (log_probs[:, j] scores the label at j + 1)
    with torch.no_grad():
        nll = [-trainer.model(**{k: v for k, v in b.items() if k != "span_ids"}, use_cache=False,
                              fused_lm_head=True).log_probs for b in batches]
    for code, name in enumerate(SPAN_NAMES):
        masks = [b["span_ids"][:, 1:] == code for b in batches]
        direct = sum(float(x[m].sum()) for x, m in zip(nll, masks, strict=True)) / sum(int(m.sum()) for m in masks)
        assert losses[f"loss_{name}"] == pytest.approx(direct, rel=1e-5)


def _loss_and_grads(trainer, batch: dict, n: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=n)
    loss.backward()
    grads = [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad]
    trainer.model.zero_grad(set_to_none=True)
    trainer._span_stats.clear()
    return loss.detach(), grads


def test_default_weights_leave_loss_and_gradients_bit_identical(span_trainer) -> None:
    trainer, batches = span_trainer
    assert trainer.span_weights is None  # the preset's default: every span weighs 1
    batch, n = batches[0], _items(batches[:1])
    with_spans = _loss_and_grads(trainer, batch, n)
    without = _loss_and_grads(trainer, {k: v for k, v in batch.items() if k != "span_ids"}, n)
    assert torch.equal(with_spans[0], without[0])
    assert len(with_spans[1]) == len(without[1]) > 0
    assert all(torch.equal(a, b) for a, b in zip(with_spans[1], without[1], strict=True))


def test_span_weights_scale_each_token_over_the_labelled_count(span_trainer) -> None:
    from trl.trainer.utils import FusedCausalLMOutput

    trainer, _ = span_trainer
    # hand-computed: 4 labelled tokens with NLL 1, 2, 3, 4 in spans reasoning, answer, bbox, eos; weights 1, 2, 4, 1;
    # the denominator stays the labelled count: (1*1 + 2*2 + 3*4 + 4*1) / 4 = 21 / 4
    span_ids = torch.tensor([[-1, REASONING, ANSWER, BBOX, EOS]])
    log_probs = torch.tensor([[-1.0, -2.0, -3.0, -4.0]], requires_grad=True)
    output = FusedCausalLMOutput(log_probs=log_probs, label_mask=span_ids[:, 1:] >= 0)
    trainer.span_weights = torch.tensor([parse_weights("answer:2,bbox:4")[s] for s in SPAN_NAMES])
    trainer._span_batch = (span_ids, torch.tensor(1 / 4), "train")
    try:
        out = trainer._span_hook(trainer.model, (), output)
    finally:
        trainer._span_batch, trainer.span_weights = None, None
    loss = -out.log_probs.sum() / 4  # TRL's loss from the (weighted) log-probs
    assert float(loss.detach()) == pytest.approx(21 / 4)
    loss.backward()
    assert log_probs.grad.tolist() == [[-0.25, -0.5, -1.0, -0.25]]
    # the per-span losses stay unweighted NLL means
    assert trainer.span_losses("train") == {"loss_reasoning": 1.0, "loss_answer": 2.0, "loss_bbox": 3.0,
                                            "loss_eos": 4.0}


def test_span_weights_on_a_real_batch_match_the_formula(span_trainer) -> None:
    trainer, batches = span_trainer
    batch, n = batches[0], _items(batches[:1])
    weights = parse_weights("answer:2,bbox:4,eos:0.5")
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "span_ids"}
        nll = -trainer.model(**inputs, use_cache=False, fused_lm_head=True).log_probs
        per_token_w = torch.tensor([weights[s] for s in SPAN_NAMES])[batch["span_ids"][:, 1:].clamp(min=0)]
        expected = (per_token_w * nll).sum() / n
        trainer.span_weights = torch.tensor([weights[s] for s in SPAN_NAMES])
        try:
            weighted = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=n)
        finally:
            trainer.span_weights = None
    losses = trainer.span_losses("train")
    assert float(weighted) == pytest.approx(float(expected), rel=1e-5)
    assert float(weighted) != pytest.approx(float(nll.sum() / n), rel=1e-3)
    counts = {s: int((batch["span_ids"] == k).sum()) for k, s in enumerate(SPAN_NAMES)}
    assert float(weighted) == pytest.approx(
        sum(weights[s] * counts[s] * losses[f"loss_{s}"] for s in SPAN_NAMES) / float(n), rel=1e-5)


def test_weights_need_spans_in_the_dataset(demo, processor, tmp_path: Path) -> None:
    from docval_sft.build import span_weight_tensor
    from docval_sft.presets import get_preset

    preset = get_preset("demo").with_overrides({"span_loss_weights": "bbox:4"})
    with pytest.raises(DocvalError, match="spans of every training record"):
        span_weight_tensor(preset, to_dataset([], [], "pixel"))
    assert span_weight_tensor(get_preset("demo"), to_dataset([], [], "pixel")) is None


# ---------------------------------------------------------------- end to end: logs, config, preview

def test_train_logs_span_losses_and_records_the_weights(trained_run: Path) -> None:
    """The session's demo run (the CLI, with evaluation): span losses in training.log, trainer_state, config."""
    log = (trained_run / "training.log").read_text()
    assert "Step 5: loss = " in log and "Step 5: loss_reasoning = " in log
    assert "loss_answer = " in log and "loss_bbox = " in log and "loss_eos = " in log
    assert "Step 16: eval_loss_reasoning = " in log and "eval_loss_bbox = " in log
    config = json.loads((trained_run / "training_config.json").read_text())
    assert config["preset"]["span_loss_weights"] == ""  # the default: every span weighs 1
    state = json.loads(max(trained_run.glob("checkpoint-*/trainer_state.json"),
                           key=lambda p: int(p.parent.name.split("-")[1])).read_text())
    logged = [e for e in state["log_history"] if "loss" in e]
    assert logged and all(f"loss_{s}" in e for e in logged for s in ("reasoning", "answer", "bbox", "eos"))
    evals = [e for e in state["log_history"] if "eval_loss" in e]
    assert evals and all(f"eval_loss_{s}" in e for e in evals for s in ("reasoning", "answer", "bbox", "eos"))


def test_preview_json_gives_token_ranges_and_the_terminal_counts(demo) -> None:
    d = demo.data
    args = ["preview-sample", "--train-data", str(d.train), "--image-dir", str(d.image_dir),
            "--model", str(demo.model_dir), "--index", "3"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    rec = load_records(d.train).records[3]
    spans, counts = facts["spans"], facts["span_tokens"]
    assert len(spans["steps"]) == len(rec.cot_steps) and set(counts) == set(SPAN_NAMES)
    assert sum(counts.values()) == facts["n_target_tokens"]
    for name in ("answer", "bbox", "eos"):
        assert counts[name] == spans[name][1] - spans[name][0] > 0
    assert counts["reasoning"] == sum(b - a for a, b in spans["steps"])
    assert spans["eos"][1] == facts["n_target_tokens"]
    human = runner.invoke(app, args)
    assert human.exit_code == 0, human.output
    assert "span tokens: " + ", ".join(f"{s} {counts[s]}" for s in SPAN_NAMES) in human.output
