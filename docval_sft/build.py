"""Turn a :class:`~docval_sft.presets.Preset` into TRL/PEFT/transformers objects: configs, model, trainer.

The config builders import nothing heavy until called and load no weights, so ``--dry-run`` and the preset tests
use them freely. Model loading never uses ``device_map="auto"`` for training (it breaks DDP/FSDP/DeepSpeed):
an unquantized model is placed by the Trainer/accelerate, a quantized one on this process's own device.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DocvalError
from .presets import Preset
from .quiet import need_bitsandbytes, quiet_libraries
from .sources import check_model_source  # noqa: F401 - quiet_libraries re-exported

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
        from .presets import full_finetune_quantized

        raise DocvalError(full_finetune_quantized(preset))
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
    from .metrics import GENERATION_METRICS, RENAMED_METRICS

    metric = preset.metric_for_best_model.removeprefix("eval_")
    known = ("loss", "mean_token_accuracy", "entropy", *GENERATION_METRICS)
    if load_best and metric in RENAMED_METRICS:
        raise DocvalError(f"metric_for_best_model {preset.metric_for_best_model!r} is not a metric any more: it was "
                          f"renamed eval_{RENAMED_METRICS[metric]} (the lenient one is eval_anls_lenient; "
                          "docs/metrics.md)")
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
        # A NaN loss is logged as NaN, not replaced by the running mean (transformers' default hides divergence).
        logging_nan_inf_filter=False,
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


def load_processor(source: Preset | str, vision: dict[str, Any] | None = None) -> Any:
    """The processor of a preset's model, or of a model id / directory; a failure is one line. ``vision``: the
    pan & scan kwargs (default: the preset's); given at load time, they apply to every call of this processor
    (TRL's collator, generation) and are kept by its ``save_pretrained`` (vision.py)."""
    from transformers import AutoProcessor

    from .vision import check_processor, vision_kwargs

    name = source.model_name_or_path if isinstance(source, Preset) else source
    if vision is None and isinstance(source, Preset):
        vision = vision_kwargs(source)
    check_model_source(name)
    try:
        processor = AutoProcessor.from_pretrained(name, **(vision or {}))
    except (OSError, ValueError) as exc:
        raise DocvalError(f"cannot load the processor of {name!r}: {str(exc).splitlines()[0]}") from exc
    check_processor(processor, vision or {})
    return processor


def load_pretrained(source: str, **kwargs: Any) -> Any:
    """``AutoModelForImageTextToText.from_pretrained`` with a one-line error naming the model."""
    from transformers import AutoModelForImageTextToText

    from safetensors import SafetensorError

    check_model_source(source)
    try:
        return AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except (OSError, ValueError, SafetensorError) as exc:  # a missing, truncated or foreign weights file
        raise DocvalError(f"cannot load model {source!r}: {str(exc).splitlines()[0]}") from exc


def load_model(preset: Preset) -> Any:
    """Load the base for training (quantized and k-bit-prepared when the preset says so)."""
    import torch

    quantization = build_quantization_config(preset)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, preset.dtype), "attn_implementation": preset.attn_implementation}
    if quantization is not None:
        need_bitsandbytes()
        from accelerate import PartialState

        # A quantized model cannot be moved after loading: put it on this process's device (one GPU per rank).
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": "cpu" if preset.use_cpu else PartialState().device}
    model = load_pretrained(preset.model_name_or_path, **kwargs)
    return prepare_quantized(model, preset) if quantization is not None else model


def load_trainable_adapter(model: Any, adapter_dir: Path) -> Any:
    """``model`` with a saved LoRA adapter attached, trainable: training continues that adapter (``refine`` trains
    each iteration on top of the previous one) instead of starting a new one."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)


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


class Diverged(DocvalError):
    """Training produced a non-finite loss or gradient: stopped before the optimizer applied it."""

    exit_code = 3


class SaveFailed(DocvalError):
    """A checkpoint or final/ could not be written (a full disk, a read-only or vanished directory)."""

    exit_code = 4


def save_failure(target: str, exc: BaseException) -> str:
    """Why ``target`` could not be written, in one line: torch reports a full disk as "basic_ios::clear: iostream
    error" and safetensors as "IoError(... StorageFull ...)", so the free space is checked and said instead."""
    import errno
    import shutil

    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    free = None
    probe = Path(target)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        pass
    full = (getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text or "StorageFull" in text
            or (free is not None and free < 64 * 2**20))
    if full:
        return f"cannot write {target}: no space left on device ({(free or 0) / 2**20:.0f} MiB free); free some space " \
               "(or lower save_total_limit)"
    if getattr(exc, "errno", None) in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {target}: {text}; choose a writable --output-dir"
    return f"cannot write {target}: {text}"


def load_full_weights(model: Any, checkpoint: str) -> None:
    """Copy a full model checkpoint into ``model`` (full fine-tuning: resume, best model).

    transformers 5 saves Gemma 3 under its original key names (``language_model.model.*``) and the Trainer loads a
    checkpoint back with a plain ``load_state_dict(strict=False)``, which matches none of them: the run went on from
    the base weights with a 78-key warning. ``from_pretrained`` applies the key mapping; the copy is strict, so a
    mismatch is an error, never a silent restart.
    """
    import torch

    dtype = next(model.parameters()).dtype
    loaded = type(model).from_pretrained(checkpoint, dtype=dtype, device_map={"": "cpu"})
    with torch.no_grad():
        model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded


def trainer_class() -> type:
    """TRL's SFTTrainer plus what docval-sft guarantees on top: generation metrics merged into evaluate()
    (so metric_for_best_model can use them), complete-or-ignored checkpoints, full fine-tuning that resumes and
    keeps its best checkpoint, and a stop before a non-finite loss or gradient reaches the weights."""
    import torch
    from trl import SFTTrainer

    from . import checkpoints
    from .callbacks import InterruptCallback
    from .spans import SPAN_NAMES, SPANS_COLUMN, SpanCollator

    class DocvalTrainer(SFTTrainer):
        generation_eval: Any = None
        _nonfinite_loss: Any = None
        # Weight of each span's tokens in the loss (SPAN_NAMES order); None: all 1 and the loss is TRL's, untouched.
        span_weights: Any = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.data_collator = SpanCollator(self.data_collator)  # + span_ids when the dataset has "spans"
            self._span_batch: tuple[Any, Any, str] | None = None  # the micro-batch now in the forward
            self._span_stats: dict[str, Any] = {}  # mode -> (2, n_spans): weighted NLL sums, weighted counts
            # Every rank reduces at each log once any dataset has spans, even a rank that saw no span row: a rank
            # skipping the collective would hang the others.
            self._uses_spans = any(SPANS_COLUMN in getattr(d, "column_names", ())
                                   for d in (self.train_dataset, self.eval_dataset) if d is not None)
            self.model.register_forward_hook(self._span_hook)

        def _set_signature_columns_if_needed(self) -> None:
            # The Trainer drops every column outside these before it builds the sampler, so group_by_length would
            # never see the token counts of the "length" column; TRL's collator ignores the extra key. "spans" must
            # reach SpanCollator.
            super()._set_signature_columns_if_needed()
            extra = [SPANS_COLUMN]
            if self.args.train_sampling_strategy == "group_by_length":
                extra.append(self.args.length_column_name)
            self._signature_columns = [*self._signature_columns, *extra]

        # ---- per-span loss (docs/training.md): from the per-token log-probs TRL's fused LM head already returns

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            span_ids = inputs.pop("span_ids", None)
            if span_ids is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            # Each micro-batch's tokens count as they do in the mean loss: over the optimizer step's labelled
            # tokens (num_items_in_batch), else over the batch's own (evaluation: each batch's mean loss).
            if num_items_in_batch is not None and mode == "train":
                factor = 1.0 / torch.as_tensor(num_items_in_batch, dtype=torch.float32)
            else:
                factor = 1.0 / (inputs["labels"][:, 1:] != -100).sum().clamp(min=1).float()
            self._span_batch = (span_ids, factor, mode)
            try:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            finally:
                self._span_batch = None

        def _span_hook(self, module: Any, args: Any, output: Any) -> Any:
            batch = self._span_batch
            log_probs = getattr(output, "log_probs", None)
            if batch is None or log_probs is None:  # generation, or a forward without the fused head
                return None
            span_ids, factor, mode = batch
            ids = span_ids[:, 1:].to(log_probs.device)  # log_probs[:, j] scores the label at position j + 1
            if ids.shape != log_probs.shape:
                return None
            labelled = ids >= 0
            index = ids.clamp(min=0).flatten()  # unlabelled positions add 0 (their log-prob is 0) to span 0
            n = len(SPAN_NAMES)
            stats = torch.zeros(2, n, device=log_probs.device, dtype=torch.float32)
            stats[0].index_add_(0, index, -log_probs.detach().float().flatten())
            stats[1].index_add_(0, index, labelled.flatten().float())
            stats *= factor.to(stats.device)
            self._span_stats[mode] = stats + self._span_stats[mode] if mode in self._span_stats else stats
            if self.span_weights is not None:
                weights = self.span_weights.to(log_probs.device, log_probs.dtype)[ids.clamp(min=0)]
                output.log_probs = log_probs * weights  # TRL's loss = -sum(log_probs) / labelled tokens
            return output

        def span_losses(self, mode: str, prefix: str = "") -> dict[str, float]:
            """``loss_<span>`` since the last call (summed over ranks), then reset; spans with no token left out."""
            stats = self._span_stats.pop(mode, None)
            if stats is None:
                if not self._uses_spans:
                    return {}
                stats = torch.zeros(2, len(SPAN_NAMES))
            stats = self.accelerator.reduce(stats.to(self.args.device), reduction="sum").tolist()
            return {f"{prefix}loss_{name}": total / count
                    for name, total, count in zip(SPAN_NAMES, stats[0], stats[1], strict=True) if count > 0}

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if self.model.training and "loss" in logs:
                logs.update(self.span_losses("train"))
            super().log(logs, start_time)

        def evaluation_loop(self, dataloader: Any, description: str, prediction_loss_only: Any = None,
                            ignore_keys: Any = None, metric_key_prefix: str = "eval") -> Any:
            self._span_stats.pop("eval", None)
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
            output.metrics.update(self.span_losses("eval", f"{metric_key_prefix}_"))
            if self.generation_eval is not None and description == "Evaluation":
                # Merged here, before evaluate() logs the metrics and runs the callbacks: early stopping reads
                # metric_for_best_model there (added after, it never saw it and silently switched itself off).
                output.metrics.update({f"{metric_key_prefix}_{k}": v
                                       for k, v in self.generation_eval(self.model).items()})
            return output

        # ---- divergence: checked once per optimizer step, before optimizer.step()

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            loss = super().training_step(model, inputs, num_items_in_batch)
            bad = ~torch.isfinite(loss.detach())  # no sync here: read once per optimizer step below
            self._nonfinite_loss = bad if self._nonfinite_loss is None else (self._nonfinite_loss | bad)
            return loss

        def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
            grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
            loss_bad = self._nonfinite_loss if self._nonfinite_loss is not None else torch.tensor(False)
            norm = torch.as_tensor(grad_norm if grad_norm is not None else 0.0, dtype=torch.float32)
            flag = (loss_bad.to(norm.device) | ~torch.isfinite(norm)).to(torch.int32).reshape(1)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                flag = flag.to(self.args.device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)  # every rank stops together
            self._nonfinite_loss = None
            if flag.item():
                step = self.state.global_step + 1
                what = "loss" if bool(loss_bad.any()) else f"gradient norm ({float(norm):g})"
                raise Diverged(
                    f"training diverged at step {step}: the {what} is not finite, so the update was not applied and "
                    f"nothing was saved from it (no final/); the last checkpoint holds the last good weights. "
                    f"Start again with a lower learning rate (this run: {self.args.learning_rate:g}; the guide: --lr "
                    "1e-5), keep gradient clipping on (max_grad_norm), check the images with `docval-sft "
                    "validate-data`")
            return grad_norm

        # ---- checkpoints: complete or ignored; full fine-tuning loads its own

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            try:
                super()._save_checkpoint(model, trial)
            except DocvalError:
                raise
            except Exception as exc:
                raise SaveFailed(save_failure(str(folder), exc)) from exc
            try:
                self.accelerator.wait_for_everyone()  # every rank's rng state and shards are on disk
            except RuntimeError:
                # another rank died mid-save (a second signal there, a crash): its files are missing, yet this
                # rank's alone pass for a complete marker-less checkpoint; keep it out of any resume
                if self.args.should_save and folder.is_dir():
                    checkpoints.set_aside([folder])
                raise
            if self.args.should_save:
                interrupted = any(isinstance(cb, InterruptCallback) and cb.received is not None
                                  for cb in self.callback_handler.callbacks)
                done = self.state.global_step >= self.state.max_steps or (
                    self.control.should_training_stop and not interrupted)
                try:
                    checkpoints.write_marker(folder, finished=done)
                except OSError as exc:
                    raise SaveFailed(save_failure(str(folder), exc)) from exc

        def _full_model(self) -> bool:
            from transformers.trainer_utils import _is_peft_model  # noqa: PLC2701 - the Trainer's own test

            return not (_is_peft_model(self.model) or self.is_deepspeed_enabled or self.is_fsdp_enabled)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            if model is None and self._full_model():
                load_full_weights(self.model, resume_from_checkpoint)
                return
            super()._load_from_checkpoint(resume_from_checkpoint, model)

        def _load_best_model(self) -> None:
            if self._full_model():
                load_full_weights(self.model, self.state.best_model_checkpoint)
                return
            super()._load_best_model()

    return DocvalTrainer


def _has_adapter(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


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
        processing_class=processor, callbacks=callbacks,
        # a model that already carries its adapter (load_trainable_adapter) trains it; TRL refuses a second one
        peft_config=None if _has_adapter(model) else build_lora_config(preset),
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; training.log and the progress bar replace it
    trainer.generation_eval = generation_eval
    trainer.span_weights = span_weight_tensor(preset, train_dataset)
    return trainer


def span_weight_tensor(preset: Preset, train_dataset: Any) -> Any:
    """The preset's ``span_loss_weights`` as a tensor in ``SPAN_NAMES`` order; None when every weight is 1 (the
    loss then stays TRL's, bit for bit)."""
    from .spans import SPAN_NAMES, SPANS_COLUMN, parse_weights

    weights = parse_weights(preset.span_loss_weights)
    if all(w == 1 for w in weights.values()):
        return None
    if SPANS_COLUMN not in getattr(train_dataset, "column_names", ()):
        raise DocvalError("span_loss_weights needs the spans of every training record: build the dataset with "
                          "to_dataset(..., spans=...) (`docval-sft train` does)")
    import torch

    return torch.tensor([weights[name] for name in SPAN_NAMES], dtype=torch.float32)
