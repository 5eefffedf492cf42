"""presets.py's override coercion and range checks, with the exact one-line errors a user sees.

Written for `make mutants` (docs/testing.md): test_presets.py matches these errors loosely (a word of the message);
a mutant that mangles the rest of the sentence, or the value it reports, got through.
"""

from __future__ import annotations

import dataclasses

import pytest

from docval_sft.errors import DocvalError
from docval_sft.presets import PRESETS, Preset, check_preset, coerce_fields, field_help, get_preset, \
    measured_performance


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(DocvalError) as info:
        fn(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize(("text", "value"), [("true", True), ("TRUE", True), ("1", True), ("Yes", True),
                                             ("false", False), ("0", False), ("no", False), ("NO", False)])
def test_bool_words(text: str, value: bool) -> None:
    assert coerce_fields({"bf16": text}, source="s") == {"bf16": value}


def test_bools_stay_bools_and_other_values_are_refused() -> None:
    assert coerce_fields({"bf16": True, "use_cpu": False}, source="s") == {"bf16": True, "use_cpu": False}
    assert error(coerce_fields, {"bf16": "maybe"}, source="cfg.yaml") == \
        "cfg.yaml: field 'bf16' expects true or false, got 'maybe'"
    assert error(coerce_fields, {"bf16": 1}, source="cfg.yaml") == "cfg.yaml: field 'bf16' expects true or false, got 1"


def test_numbers() -> None:
    assert coerce_fields({"lora_r": "8", "learning_rate": "3e-4", "seed": 4.0, "num_train_epochs": 2},
                         source="s") == {"lora_r": 8, "learning_rate": 3e-4, "seed": 4, "num_train_epochs": 2.0}
    assert type(coerce_fields({"num_train_epochs": 2}, source="s")["num_train_epochs"]) is float
    assert error(coerce_fields, {"lora_r": True}, source="--set") == "--set: field 'lora_r' expects int, got True"
    assert error(coerce_fields, {"learning_rate": "fast"}, source="--set") == \
        "--set: field 'learning_rate' expects float, got 'fast'"
    assert error(coerce_fields, {"lora_r": 2.5}, source="--set") == "--set: field 'lora_r' expects an integer, got 2.5"
    assert error(coerce_fields, {"lora_r": [8]}, source="--set") == "--set: field 'lora_r' expects an integer, got [8]"
    assert error(coerce_fields, {"learning_rate": [1.0]}, source="--set") == \
        "--set: field 'learning_rate' expects float, got [1.0]"


def test_names_lists_and_strings() -> None:
    assert coerce_fields({"lora_target_modules": " q_proj, ,v_proj "}, source="s") == \
        {"lora_target_modules": ("q_proj", "v_proj")}
    assert coerce_fields({"lora_target_modules": ["o_proj"]}, source="s") == {"lora_target_modules": ("o_proj",)}
    assert error(coerce_fields, {"lora_target_modules": 3}, source="s") == \
        "s: field 'lora_target_modules' expects a list of names, got 3"
    assert error(coerce_fields, {"lora_target_modules": ["q", 3]}, source="s") == \
        "s: field 'lora_target_modules' expects a list of names, got ['q', 3]"
    assert error(coerce_fields, {"optim": 3}, source="s") == "s: field 'optim' expects a string, got 3"
    assert coerce_fields({"optim": "sgd"}, source="s") == {"optim": "sgd"}
    assert error(coerce_fields, {"bbox_format": "norm100"}, source="s") == \
        "s: field 'bbox_format' expects one of pixel, norm1000, norm10000, got 'norm100'"
    assert error(coerce_fields, {"nope": 1}, source="s", preset="h100") == \
        "s: unknown preset field 'nope'; see `docval-sft presets show h100`"
    assert error(coerce_fields, {"nope": 1}, source="s") == \
        "s: unknown preset field 'nope'; see `docval-sft presets show a100`"


def test_with_overrides_names_the_preset_to_look_at() -> None:
    assert error(get_preset("h100").with_overrides, {"nope": 1}) == \
        "override: unknown preset field 'nope'; see `docval-sft presets show h100`"
    custom = dataclasses.replace(get_preset("h100"), name="mine")
    assert error(custom.with_overrides, {"nope": 1}, source="x.yaml") == \
        "x.yaml: unknown preset field 'nope'; see `docval-sft presets show a100`"
    assert error(custom.with_overrides, {"nope": 1}, source="x.yaml", preset="demo") == \
        "x.yaml: unknown preset field 'nope'; see `docval-sft presets show demo`"
    assert error(custom.with_overrides, {"lora_r": 0}, source="x.yaml") == \
        "x.yaml: field 'lora_r' must be an integer >= 1, got 0"
    changed = custom.with_overrides({"lora_r": "8"})
    assert changed.lora_r == 8 and changed.name == "mine" and custom.lora_r == get_preset("h100").lora_r


def test_check_preset_errors_in_full() -> None:
    base = get_preset("a100")
    assert error(check_preset, dataclasses.replace(base, load_in_8bit=True, load_in_4bit=True), source="s") == \
        "s: load_in_8bit and load_in_4bit are exclusive; choose one"
    assert error(check_preset, dataclasses.replace(base, use_lora=False, load_in_8bit=True), source="s") == \
        ("s: a quantized base (load_in_8bit) cannot be fully fine-tuned; keep use_lora (--use-lora) with --use-8bit, "
         "or load the base unquantized (--no-8bit)")
    assert error(check_preset, dataclasses.replace(base, use_lora=False, load_in_4bit=True), source="s") == \
        ("s: a quantized base (load_in_4bit) cannot be fully fine-tuned; keep use_lora (--use-lora) with load_in_4bit, "
         "or load the base unquantized (--set load_in_4bit=false)")
    check_preset(dataclasses.replace(base, load_in_4bit=True), source="s")  # with LoRA: fine
    check_preset(dataclasses.replace(base, use_lora=False), source="s")  # full fine-tuning of a bf16 base: fine


def test_every_field_has_its_help_and_its_default() -> None:
    helps = field_help()
    assert set(helps) == {f.name for f in dataclasses.fields(Preset)}
    assert helps["lora_r"] == "LoRA rank: adapter capacity and size grow linearly with it."
    assert helps["seed"] == "Seed for adapter init, data order and dropout."
    assert all(isinstance(h, str) and h for h in helps.values())
    assert (Preset().lora_r, Preset().seed, Preset().name) == (32, 42, "custom")


def test_unknown_preset_lists_them_all() -> None:
    assert error(get_preset, "v100") == ("unknown preset 'v100'; choose one of: " + ", ".join(PRESETS))
    assert ", ".join(PRESETS).count(", ") == len(PRESETS) - 1 and "a100, h100" in ", ".join(PRESETS)


def test_measured_performance_is_a_mapping_per_preset() -> None:
    perf = measured_performance()
    assert isinstance(perf, dict) and set(perf) <= set(PRESETS)
