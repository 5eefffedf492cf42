"""Speed switches of the presets: length-grouped batches from the measured token counts, dataloader workers."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from docval_sft.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def measured_split(demo, processor):
    from docval_sft.lengths import TokenCounter
    from docval_sft.validate import prepare_split

    return prepare_split("train", demo.data.train, demo.data.image_dir, counter=TokenCounter(processor))


def demo_trainer(demo, processor, dataset, strategy: str, out: Path):
    """The trainer `train` builds for the demo preset with this sampling strategy."""
    from docval_sft.build import build_trainer, load_model
    from docval_sft.presets import get_preset

    preset = get_preset("demo").with_overrides({"model_name_or_path": str(demo.model_dir),
                                                 "train_sampling_strategy": strategy})
    return build_trainer(preset, load_model(preset), processor, dataset, None, str(out), report_to=[])


def counted_dataset(split, n: int | None = None):
    from docval_sft.convert import to_dataset

    return to_dataset(split.records[:n], split.image_paths[:n], lengths=[c.total for c in split.token_counts[:n]])


def epoch_of_batches(demo, processor, split, strategy: str, tmp_path: Path) -> list[list[int]]:
    """Real token counts of each batch of one epoch of the Trainer's own training dataloader."""
    trainer = demo_trainer(demo, processor, counted_dataset(split), strategy, tmp_path / strategy)
    return [batch["attention_mask"].sum(dim=1).tolist() for batch in trainer.get_train_dataloader()]


def padding(batches: list[list[int]]) -> int:
    return sum(len(b) * max(b) - sum(b) for b in batches)


def test_group_by_length_uses_the_measured_counts_and_cuts_padding(demo, processor, measured_split,
                                                                  tmp_path: Path) -> None:
    lengths = [c.total for c in measured_split.token_counts]
    assert len(set(lengths)) > 10  # the demo records differ in length, or there would be nothing to group
    grouped = epoch_of_batches(demo, processor, measured_split, "group_by_length", tmp_path)
    shuffled = epoch_of_batches(demo, processor, measured_split, "random", tmp_path)
    # Every record exactly once, and the counts measured before training are the collator's real lengths.
    assert Counter(t for b in grouped for t in b) == Counter(lengths) == Counter(t for b in shuffled for t in b)
    # transformers' LengthGroupedSampler puts the longest record in the first batch (an OOM shows at step 1).
    assert max(grouped[0]) == max(lengths)
    assert padding(grouped) < padding(shuffled) / 2, (padding(grouped), padding(shuffled))


def test_the_length_column_survives_only_when_grouping(demo, processor, measured_split, tmp_path: Path) -> None:
    """The Trainer drops columns its model does not take before building the sampler; ours keeps 'length'."""
    from docval_sft.convert import to_dataset
    from docval_sft.errors import DocvalError

    dataset = counted_dataset(measured_split, 8)
    for strategy, kept in (("group_by_length", True), ("random", False)):
        trainer = demo_trainer(demo, processor, dataset, strategy, tmp_path / strategy)
        columns = trainer._remove_unused_columns(dataset).column_names
        assert ("length" in columns) is kept and {"prompt", "completion", "images"} <= set(columns)
    # Through the Python API without the counts: one clear error instead of transformers' "cannot infer lengths".
    bare = to_dataset(measured_split.records[:8], measured_split.image_paths[:8])
    with pytest.raises(DocvalError, match=r"needs the token count of every train record: .*lengths=\.\.\."):
        demo_trainer(demo, processor, bare, "group_by_length", tmp_path / "bare")


@pytest.mark.slow
def test_cli_trains_with_grouped_batches_and_dataloader_workers(demo, tmp_path: Path) -> None:
    d = demo.data
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--preset", "demo", "--model", str(demo.model_dir), "--train-data", str(d.train),
        "--val-data", str(d.val), "--image-dir", str(d.image_dir), "--output-dir", str(out), "--max-steps", "3",
        "--set", "train_sampling_strategy=group_by_length", "--set", "dataloader_num_workers=2",
        "--eval-steps", "3", "--save-steps", "3",
    ])
    assert result.exit_code == 0, result.output
    preset = json.loads((out / "training_config.json").read_text())["preset"]
    assert (preset["train_sampling_strategy"], preset["dataloader_num_workers"]) == ("group_by_length", 2)
    assert "Step 3: eval_loss = " in (out / "training.log").read_text()
    assert (out / "final" / "adapter_model.safetensors").is_file()
    bad = runner.invoke(app, ["train", "--preset", "demo", "--model", str(demo.model_dir), "--train-data",
                              str(d.train), "--image-dir", str(d.image_dir), "--output-dir", str(tmp_path / "x"),
                              "--set", "train_sampling_strategy=longest_first"])
    assert bad.exit_code == 2
    assert "field 'train_sampling_strategy' expects one of random, group_by_length" in bad.output


def test_8bit_base_keeps_its_embedding_in_the_load_dtype(demo) -> None:
    """PEFT's k-bit preparation upcasts every unquantized weight to float32; the frozen token embedding (1.0B
    parameters in Gemma 3 12B, tied to the LM head) goes back to bf16 with its values unchanged."""
    import torch
    from safetensors.torch import load_file

    from docval_sft.build import load_model
    from docval_sft.presets import get_preset

    preset = get_preset("3090-8bit").with_overrides({"model_name_or_path": str(demo.model_dir), "use_cpu": True})
    model = load_model(preset)
    embedding = model.get_input_embeddings().weight
    assert embedding.dtype == torch.bfloat16 and not embedding.requires_grad
    assert model.get_output_embeddings().weight is embedding  # still tied
    saved = load_file(demo.model_dir / "model.safetensors")
    key = next(k for k in saved if k.endswith("embed_tokens.weight"))
    assert torch.equal(embedding, saved[key].to(torch.bfloat16))
    layer = model.model.language_model.layers[0]
    assert layer.mlp.up_proj.weight.dtype == torch.int8  # the linears stay int8
    assert layer.input_layernorm.weight.dtype == torch.float32  # PEFT's float32 norms are kept


def test_checks_in_worker_processes_give_the_same_report(demo, processor) -> None:
    """Decoding and counting in forked workers: the same records, counts, sizes and issues, in file order."""
    from docval_sft.lengths import TokenCounter
    from docval_sft.validate import prepare_split

    def facts(split) -> tuple:
        return (split.records, split.image_paths, split.image_sizes, split.token_counts,
                [(i.location.index, i.code, i.field, i.message) for i in split.issues])

    counter = TokenCounter(processor)
    totals = sorted(c.total for c in prepare_split("train", demo.data.train, demo.data.image_dir,
                                                   counter=counter).token_counts)
    median = totals[len(totals) // 2]  # so that about half the records are too long for max_length
    for path in (demo.data.train, demo.data.bad):
        ticks: dict[int, list[int]] = {0: [], 2: []}
        one, two = (prepare_split("train", path, demo.data.image_dir, counter=counter, max_length=median,
                                  workers=n, on_record=lambda n=n: ticks[n].append(1)) for n in (0, 2))
        assert facts(two) == facts(one)
        assert len(ticks[2]) == len(ticks[0]) > 0  # the progress bar advances once per record either way
        if path == demo.data.train:  # the max_length check runs on the workers' counts too
            assert 0 < sum(i.code == "too_long" for i in two.issues) < len(totals)
    bad = prepare_split("train", demo.data.bad, demo.data.image_dir, workers=2)
    codes = {i.code for i in bad.issues}
    assert {"missing_image", "unreadable_image", "not_an_image"} <= codes  # image problems cross processes


def test_validate_data_cli_workers_option(demo, tiny_model_dir: Path) -> None:
    d = demo.data
    args = ["validate-data", "--train-data", str(d.train), "--val-data", str(d.val), "--image-dir",
            str(d.image_dir), "--model", str(tiny_model_dir), "--max-length", "1024", "--json"]
    serial = runner.invoke(app, args)
    parallel = runner.invoke(app, [*args, "--workers", "2"])
    assert serial.exit_code == parallel.exit_code == 0, parallel.output
    assert json.loads(parallel.stdout) == json.loads(serial.stdout)
    assert json.loads(serial.stdout)["splits"]["train"]["tokens"]["total"]["max"] > 0
