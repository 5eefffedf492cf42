"""Turn a :class:`~docval_sft.presets.Preset` into TRL/PEFT/transformers objects: configs, model, trainer.

The config builders import nothing heavy until called and load no weights, so ``--dry-run`` and the preset tests
use them freely. Model loading never uses ``device_map="auto"`` for training (it breaks DDP/FSDP/DeepSpeed):
an unquantized model is placed by the Trainer/accelerate, a quantized one on this process's own device.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import DocvalError
from .presets import Preset

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

# Vision-tower linear layers (SigLIP encoder): attention and MLP projections. The SigLIP pooling head also has
# out_proj/fc1/fc2 but Gemma 3 never runs it: adapters there would be dead weights (and unused DDP parameters).
VISION_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def lora_target_regex(preset: Preset) -> str:
    """PEFT full-match regex: the language model's ``lora_target_modules`` (+ the vision tower if asked).

    Plain names like ``q_proj`` would also match the vision tower's attention; anchoring on the module path makes
    the choice deliberate.
    """
    language = rf".*language_model.*\.({'|'.join(preset.lora_target_modules)})"
    if not preset.lora_vision_tower:
        return language
    return rf"{language}|.*vision_tower.*\.encoder\..*\.({'|'.join(VISION_TARGETS)})"


def build_lora_config(preset: Preset) -> LoraConfig | None:
    if not preset.use_lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=preset.lora_r, lora_alpha=preset.lora_alpha, lora_dropout=preset.lora_dropout,
        target_modules=lora_target_regex(preset), bias="none", task_type="CAUSAL_LM",
    )


def build_quantization_config(preset: Preset) -> BitsAndBytesConfig | None:
    if preset.load_in_8bit and preset.load_in_4bit:
        raise DocvalError("load_in_8bit and load_in_4bit are exclusive; choose one")
    if not (preset.load_in_8bit or preset.load_in_4bit):
        return None
    if not preset.use_lora:
        raise DocvalError("a quantized base cannot be fully fine-tuned; keep use_lora (--use-lora) with --use-8bit")
    import torch
    from transformers import BitsAndBytesConfig

    if preset.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, preset.dtype))


def sft_config_kwargs(preset: Preset, output_dir: str, *, has_eval: bool, report_to: list[str]) -> dict[str, Any]:
    """Keyword arguments of the run's ``SFTConfig`` (a plain dict, so --dry-run can print it without a GPU)."""
    evaluate = has_eval and preset.eval_steps > 0
    load_best = preset.load_best_model_at_end and evaluate
    from .evaluate import GENERATION_METRICS

    metric = preset.metric_for_best_model.removeprefix("eval_")
    known = ("loss", "mean_token_accuracy", "entropy", *GENERATION_METRICS)
    if load_best and metric not in known:  # caught now, not at the first evaluation hours into the run
        raise DocvalError(f"metric_for_best_model {preset.metric_for_best_model!r} is not a metric; choose one of "
                          + ", ".join(f"eval_{m}" for m in known))
    if load_best and metric in GENERATION_METRICS and preset.eval_generate <= 0:
        raise DocvalError(f"metric_for_best_model {preset.metric_for_best_model!r} is a generation metric: it "
                          "needs --eval-generate N (records generated at each evaluation)")
    if load_best and preset.save_steps % preset.eval_steps:
        raise DocvalError(f"save_steps ({preset.save_steps}) must be a multiple of eval_steps ({preset.eval_steps}) "
                          "to keep the best checkpoint; change one, or set load_best_model_at_end false")
    return dict(
        output_dir=output_dir,
        num_train_epochs=preset.num_train_epochs,
        max_steps=preset.max_steps,
        per_device_train_batch_size=preset.per_device_train_batch_size,
        per_device_eval_batch_size=preset.per_device_eval_batch_size,
        gradient_accumulation_steps=preset.gradient_accumulation_steps,
        learning_rate=preset.learning_rate,
        lr_scheduler_type=preset.lr_scheduler_type,
        warmup_steps=preset.warmup_ratio,  # transformers reads a float in [0, 1) as a ratio of the total steps
        weight_decay=preset.weight_decay,
        max_grad_norm=preset.max_grad_norm,
        optim=preset.optim,
        bf16=preset.bf16,
        gradient_checkpointing=preset.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if preset.gradient_checkpointing else None,
        # Lengths are checked per record before training; TRL's truncation would cut image tokens or the tail.
        max_length=None,
        completion_only_loss=True,
        seed=preset.seed,
        use_cpu=preset.use_cpu,
        dataloader_num_workers=preset.dataloader_num_workers,
        train_sampling_strategy=preset.train_sampling_strategy,  # reads the "length" column (to_dataset)
        logging_steps=preset.logging_steps,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=preset.eval_steps if evaluate else None,
        save_strategy="steps",
        save_steps=preset.save_steps,
        save_total_limit=preset.save_total_limit,
        load_best_model_at_end=load_best,
        metric_for_best_model=preset.metric_for_best_model if load_best else None,
        greater_is_better=None if not load_best else not preset.metric_for_best_model.endswith("loss"),
        report_to=report_to or "none",
        # Every sample has an image and LoRA adapts only layers that run, so no parameter is ever unused (TRL's
        # VLM default, True, costs an extra autograd traversal per step). Full fine-tuning also trains the
        # SigLIP pooling head, which Gemma 3 never runs: DDP must then look for unused parameters.
        ddp_find_unused_parameters=not preset.use_lora,
        disable_tqdm=True,  # our rich progress bar replaces tqdm's
    )


def build_sft_config(preset: Preset, output_dir: str, *, has_eval: bool, report_to: list[str]) -> Any:
    """The run's SFTConfig; transformers' own argument checks (e.g. bf16 without a GPU) become one-line errors."""
    from trl import SFTConfig

    try:
        return SFTConfig(**sft_config_kwargs(preset, output_dir, has_eval=has_eval, report_to=report_to))
    except ValueError as exc:
        hint = " (without a bf16 GPU: --no-bf16, and --set use_cpu=true on a CPU)" if "bf16" in str(exc) else ""
        raise DocvalError(f"invalid training configuration: {str(exc).splitlines()[0]}{hint}") from exc


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps a run makes, computed as transformers' Trainer does."""

    n_records: int
    world_size: int
    samples_per_step: int
    steps_per_epoch: int
    total_steps: int

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def step_plan(preset: Preset, n_records: int, n_processes: int | None = None) -> StepPlan:
    n_processes = n_processes or world_size()
    batches = math.ceil(n_records / (preset.per_device_train_batch_size * n_processes))
    g = preset.gradient_accumulation_steps
    per_epoch = max(batches // g + int(batches % g > 0), 1)
    total = preset.max_steps if preset.max_steps > 0 else math.ceil(preset.num_train_epochs * per_epoch)
    return StepPlan(n_records, n_processes, preset.per_device_train_batch_size * g * n_processes, per_epoch, total)


def quiet_libraries() -> None:
    """Our progress bar and logs report the work; the libraries' own bars and internal deprecation notices
    (about arguments their own code passes) would only bury them."""
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6", category=FutureWarning)


def load_processor(source: Preset | str) -> Any:
    """The processor of a preset's model, or of a model id / directory; a failure is one line."""
    from transformers import AutoProcessor

    name = source.model_name_or_path if isinstance(source, Preset) else source
    try:
        return AutoProcessor.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise DocvalError(f"cannot load the processor of {name!r}: {str(exc).splitlines()[0]}") from exc


def load_pretrained(source: str, **kwargs: Any) -> Any:
    """``AutoModelForImageTextToText.from_pretrained`` with a one-line error naming the model."""
    from transformers import AutoModelForImageTextToText

    try:
        return AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise DocvalError(f"cannot load model {source!r}: {str(exc).splitlines()[0]}") from exc


def load_model(preset: Preset) -> Any:
    """Load the base for training (quantized and k-bit-prepared when the preset says so)."""
    import torch

    quantization = build_quantization_config(preset)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, preset.dtype), "attn_implementation": preset.attn_implementation}
    if quantization is not None:
        from accelerate import PartialState

        # A quantized model cannot be moved after loading: put it on this process's device (one GPU per rank).
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": "cpu" if preset.use_cpu else PartialState().device}
    model = load_pretrained(preset.model_name_or_path, **kwargs)
    return prepare_quantized(model, preset) if quantization is not None else model


def prepare_quantized(model: Any, preset: Preset) -> Any:
    """PEFT's k-bit preparation of a freshly loaded quantized model, minus its float32 copy of the embedding."""
    import torch
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=preset.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    # PEFT casts every weight it did not quantize to float32, the frozen token embedding (tied to the LM head)
    # included: 1.0B parameters for Gemma 3 12B, 1.9 GiB more on a 24 GB card, and float32 hidden states after it.
    # Its values were loaded in preset.dtype, so casting them back loses nothing.
    model.get_input_embeddings().to(getattr(torch, preset.dtype))
    return model


def trainer_class() -> type:
    """TRL's SFTTrainer, plus generation metrics merged into evaluate() (so metric_for_best_model can use them)."""
    from trl import SFTTrainer

    class DocvalTrainer(SFTTrainer):
        generation_eval: Any = None

        def _set_signature_columns_if_needed(self) -> None:
            # The Trainer drops every column outside these before it builds the sampler, so group_by_length would
            # never see the token counts of the "length" column; TRL's collator ignores the extra key.
            super()._set_signature_columns_if_needed()
            if self.args.train_sampling_strategy == "group_by_length":
                self._signature_columns = [*self._signature_columns, self.args.length_column_name]

        def evaluate(self, *args: Any, metric_key_prefix: str = "eval", **kwargs: Any) -> dict[str, float]:
            metrics = super().evaluate(*args, metric_key_prefix=metric_key_prefix, **kwargs)
            if self.generation_eval is not None:
                extra = {f"{metric_key_prefix}_{k}": v for k, v in self.generation_eval(self.model).items()}
                self.log(extra)
                metrics.update(extra)
            return metrics

    return DocvalTrainer


def build_trainer(preset: Preset, model: Any, processor: Any, train_dataset: Any, eval_dataset: Any,
                  output_dir: str, *, report_to: list[str], callbacks: list[Any] | None = None,
                  generation_eval: Any = None) -> Any:
    """An ``SFTTrainer`` wired with the preset's SFTConfig and LoraConfig; TRL does collation and masking."""
    from transformers import EarlyStoppingCallback, PrinterCallback

    args = build_sft_config(preset, output_dir, has_eval=eval_dataset is not None, report_to=report_to)
    for name, dataset in (("train", train_dataset), ("eval", eval_dataset)):
        if preset.train_sampling_strategy == "group_by_length" and dataset is not None \
                and args.length_column_name not in getattr(dataset, "column_names", ()):
            raise DocvalError(f"train_sampling_strategy=group_by_length needs the token count of every {name} record: "
                              "build the dataset with to_dataset(..., lengths=...) (`docval-sft train` does)")
    from .callbacks import FrozenVisionTowerCallback

    callbacks = [*(callbacks or []), FrozenVisionTowerCallback()]
    if args.load_best_model_at_end and preset.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=preset.early_stopping_patience))
    trainer = trainer_class()(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        processing_class=processor, peft_config=build_lora_config(preset), callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; training.log and the progress bar replace it
    trainer.generation_eval = generation_eval
    return trainer
