"""build.py's config builders (SFTConfig kwargs, LoRA, quantization, the step plan) against values written out by
hand: every preset field gets a value no other field has, so a field read from the wrong place shows.

Written for `make mutants` (docs/testing.md): test_presets.py checks a few fields of every preset's config; these
check every key.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import trl

from docval_sft.build import (
    StepPlan,
    build_lora_config,
    build_quantization_config,
    build_sft_config,
    lora_target_regex,
    sft_config_kwargs,
    step_plan,
    world_size,
)
from docval_sft.errors import DocvalError
from docval_sft.presets import Preset

DISTINCT = Preset(
    num_train_epochs=2.5, max_steps=-1, per_device_train_batch_size=3, per_device_eval_batch_size=5,
    gradient_accumulation_steps=7, learning_rate=3e-4, lr_scheduler_type="linear", warmup_ratio=0.06,
    weight_decay=0.02, max_grad_norm=0.7, optim="adamw_torch_fused", bf16=False, gradient_checkpointing=True,
    seed=11, use_cpu=True, dataloader_num_workers=2, train_sampling_strategy="group_by_length", logging_steps=4,
    eval_steps=20, save_steps=40, save_total_limit=6, load_best_model_at_end=True, metric_for_best_model="eval_loss",
    use_lora=True,
)

EXPECTED = dict(
    output_dir="/runs/x", num_train_epochs=2.5, max_steps=-1, per_device_train_batch_size=3,
    per_device_eval_batch_size=5, gradient_accumulation_steps=7, learning_rate=3e-4, lr_scheduler_type="linear",
    warmup_steps=0.06, weight_decay=0.02, max_grad_norm=0.7, optim="adamw_torch_fused", bf16=False,
    gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}, max_length=None,
    completion_only_loss=True, logging_nan_inf_filter=False, seed=11, use_cpu=True, dataloader_num_workers=2,
    train_sampling_strategy="group_by_length", logging_steps=4, eval_strategy="steps", eval_steps=20,
    save_strategy="steps", save_steps=40, save_total_limit=6, load_best_model_at_end=True,
    metric_for_best_model="eval_loss", greater_is_better=False, report_to=["tensorboard"],
    ddp_find_unused_parameters=False, disable_tqdm=True,
)


def kwargs(preset: Preset = DISTINCT, *, has_eval: bool = True, report_to: list[str] | None = None, **fields):
    return sft_config_kwargs(dataclasses.replace(preset, **fields), "/runs/x", has_eval=has_eval,
                             report_to=["tensorboard"] if report_to is None else report_to)


def test_every_sft_config_key() -> None:
    got = kwargs()
    assert got == EXPECTED and list(got) == list(EXPECTED)


def test_without_evaluation_nothing_is_evaluated_or_kept_as_best() -> None:
    no_eval = dict(EXPECTED, eval_strategy="no", eval_steps=None, load_best_model_at_end=False,
                   metric_for_best_model=None, greater_is_better=None)
    assert kwargs(has_eval=False) == no_eval
    assert kwargs(eval_steps=0) == dict(no_eval, save_steps=40)
    # no best model asked for: evaluation still runs, nothing is picked
    assert kwargs(load_best_model_at_end=False) == dict(EXPECTED, load_best_model_at_end=False,
                                                       metric_for_best_model=None, greater_is_better=None)


def test_the_switches_that_change_a_value() -> None:
    assert kwargs(report_to=[])["report_to"] == "none"
    assert kwargs(gradient_checkpointing=False)["gradient_checkpointing_kwargs"] is None
    assert kwargs(use_lora=False)["ddp_find_unused_parameters"] is True
    assert kwargs(max_steps=9)["max_steps"] == 9
    best_anls = kwargs(metric_for_best_model="eval_anls_standard", eval_generate=8)
    assert (best_anls["metric_for_best_model"], best_anls["greater_is_better"]) == ("eval_anls_standard", True)
    assert kwargs(metric_for_best_model="eval_mean_token_accuracy")["greater_is_better"] is True
    assert kwargs(metric_for_best_model="loss")["greater_is_better"] is False  # without the eval_ prefix too


def test_metric_for_best_model_is_checked_before_training() -> None:
    with pytest.raises(DocvalError) as info:
        kwargs(metric_for_best_model="eval_anls")
    assert str(info.value) == ("metric_for_best_model 'eval_anls' is not a metric any more: it was renamed "
                               "eval_anls_standard (the lenient one is eval_anls_lenient; docs/metrics.md)")
    with pytest.raises(DocvalError) as info:
        kwargs(metric_for_best_model="eval_bleu")
    assert str(info.value) == (
        "metric_for_best_model 'eval_bleu' is not a metric; choose one of eval_loss, eval_mean_token_accuracy, "
        "eval_entropy, eval_anls_standard, eval_anls_lenient, eval_iou, eval_map_50_95, eval_acc_iou_50, "
        "eval_cot_compliance")
    with pytest.raises(DocvalError) as info:
        kwargs(metric_for_best_model="eval_iou", eval_generate=0)
    assert str(info.value) == ("metric_for_best_model 'eval_iou' is a generation metric: it needs --eval-generate N "
                               "(records generated at each evaluation)")
    with pytest.raises(DocvalError) as info:
        kwargs(save_steps=30)
    assert str(info.value) == ("save_steps (30) must be a multiple of eval_steps (20) to keep the best checkpoint; "
                               "change one, or set load_best_model_at_end false")
    # none of it matters when no best model is kept
    for fields in ({"metric_for_best_model": "eval_anls"}, {"metric_for_best_model": "eval_bleu"},
                   {"metric_for_best_model": "eval_iou"}, {"save_steps": 30}):
        assert kwargs(has_eval=False, **fields)["load_best_model_at_end"] is False
        assert kwargs(load_best_model_at_end=False, **fields)["load_best_model_at_end"] is False


def test_build_sft_config_passes_every_key_to_trl() -> None:
    args = build_sft_config(DISTINCT, "/runs/x", has_eval=True, report_to=[])
    assert isinstance(args, trl.SFTConfig)
    assert (args.output_dir, args.per_device_train_batch_size, args.gradient_accumulation_steps, args.seed,
            args.save_total_limit, args.metric_for_best_model) == ("/runs/x", 3, 7, 11, 6, "eval_loss")
    assert args.completion_only_loss is True and args.max_length is None and args.report_to == []
    reporting = build_sft_config(DISTINCT, "/runs/x", has_eval=True, report_to=["tensorboard"])
    assert reporting.report_to == ["tensorboard"]


def test_build_sft_config_turns_trls_value_error_into_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DocvalError) as info:
        build_sft_config(dataclasses.replace(DISTINCT, lr_scheduler_type="nonsense"), "/runs/x", has_eval=True,
                         report_to=[])
    assert str(info.value).startswith("invalid training configuration: nonsense is not a valid SchedulerType")
    assert "bf16" not in str(info.value)

    def bf16_refused(**_: object) -> None:
        raise ValueError("Your setup doesn't support bf16/gpu.\nsecond line")

    monkeypatch.setattr(trl, "SFTConfig", bf16_refused)
    with pytest.raises(DocvalError) as info:
        build_sft_config(DISTINCT, "/runs/x", has_eval=True, report_to=[])
    assert str(info.value) == ("invalid training configuration: Your setup doesn't support bf16/gpu. (without a bf16 "
                               "GPU: --no-bf16, and --set use_cpu=true on a CPU)")


def test_lora_config() -> None:
    assert build_lora_config(dataclasses.replace(DISTINCT, use_lora=False)) is None
    preset = dataclasses.replace(DISTINCT, lora_r=8, lora_alpha=24, lora_dropout=0.125,
                                 lora_target_modules=("q_proj", "down_proj"))
    lora = build_lora_config(preset)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.bias, lora.target_modules) == (
        8, 24, 0.125, "none", r".*language_model.*\.(q_proj|down_proj)")
    assert str(lora.task_type.value if hasattr(lora.task_type, "value") else lora.task_type) == "CAUSAL_LM"
    assert lora_target_regex(dataclasses.replace(preset, lora_vision_tower=True)) == (
        r".*language_model.*\.(q_proj|down_proj)|.*vision_tower.*\.encoder\..*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)")


def test_quantization_config() -> None:
    assert build_quantization_config(DISTINCT) is None
    with pytest.raises(DocvalError, match="^load_in_8bit and load_in_4bit are exclusive; choose one$"):
        build_quantization_config(dataclasses.replace(DISTINCT, load_in_8bit=True, load_in_4bit=True))
    for bits in ("load_in_8bit", "load_in_4bit"):
        refusal = rf"^a quantized base \({bits}\) cannot be fully fine-tuned; keep use_lora"
        with pytest.raises(DocvalError, match=refusal):
            build_quantization_config(dataclasses.replace(DISTINCT, use_lora=False, **{bits: True}))
    eight = build_quantization_config(dataclasses.replace(DISTINCT, load_in_8bit=True))
    assert (eight.load_in_8bit, eight.load_in_4bit, eight.bnb_4bit_use_double_quant) == (True, False, False)
    four = build_quantization_config(dataclasses.replace(DISTINCT, load_in_4bit=True, dtype="float16"))
    assert (four.load_in_8bit, four.load_in_4bit, four.bnb_4bit_quant_type, four.bnb_4bit_use_double_quant,
            four.bnb_4bit_compute_dtype) == (False, True, "nf4", True, torch.float16)


def test_step_plan_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    p = dataclasses.replace(DISTINCT, per_device_train_batch_size=2, gradient_accumulation_steps=4,
                            num_train_epochs=1.5)
    # 100 records, 2 per batch, 1 process: 50 batches; 4 per step: 12 full steps + 1 partial = 13 per epoch;
    # 1.5 epochs -> ceil(19.5) = 20 steps; 2 x 4 x 1 = 8 samples per step
    assert step_plan(p, 100, 1) == StepPlan(100, 1, 8, 13, 20)
    # 2 processes: ceil(100 / 4) = 25 batches -> 6 + 1 = 7 per epoch, ceil(10.5) = 11; 16 samples per step
    assert step_plan(p, 100, 2) == StepPlan(100, 2, 16, 7, 11)
    # 48 records, 1 process: 24 batches, exactly 6 steps per epoch, 9 in all
    assert step_plan(p, 48, 1).to_dict() == {"n_records": 48, "world_size": 1, "samples_per_step": 8,
                                             "steps_per_epoch": 6, "total_steps": 9}
    assert step_plan(p, 1, 1).steps_per_epoch == 1  # one partial step is still a step
    assert step_plan(dataclasses.replace(p, max_steps=5), 100, 1).total_steps == 5
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert world_size() == 3 and step_plan(p, 100).world_size == 3
    # ceil(100 / 6) = 17 batches -> 4 + 1 = 5 per epoch -> ceil(7.5) = 8
    assert step_plan(p, 100) == StepPlan(100, 3, 24, 5, 8)
    monkeypatch.delenv("WORLD_SIZE")
    assert world_size() == 1
    assert math.isclose(step_plan(dataclasses.replace(p, num_train_epochs=0.5), 100, 1).total_steps, 7)
