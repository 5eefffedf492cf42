"""GRPO with docval-sft's grounding rewards: 2 steps of TRL's GRPOTrainer on the tiny demo model, on the CPU.

    docval-sft make-demo-data demo-out && python examples/grpo_rewards.py [demo-out]

The same script on a real student: the Gemma 3 base (or a merged B1 model) instead of the tiny one, a LoRA
config from a preset (build_lora_config), bf16 on a GPU, many more steps, and reward_weights to taste.
"""

import json
import sys
from pathlib import Path

from transformers import PrinterCallback
from trl import GRPOConfig, GRPOTrainer

from docval_sft.build import build_lora_config, load_pretrained, load_processor
from docval_sft.images import open_image
from docval_sft.presets import get_preset
from docval_sft.rewards import REWARD_FUNCS, grpo_dataset
from docval_sft.validate import prepare_split

demo = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out")
model_dir = demo / "tiny-gemma3"
split = prepare_split("train", demo / "D3_train.json", demo / "images", limit=4)
sizes = [open_image(p).size for p in split.image_paths]
dataset = grpo_dataset(split.records, split.image_paths, sizes, bbox_format="pixel")

args = GRPOConfig(
    output_dir=str(demo / "grpo-run"), max_steps=2, per_device_train_batch_size=2, num_generations=2,
    max_completion_length=8, learning_rate=1e-4, logging_steps=1, use_cpu=True, bf16=False, report_to="none",
    gradient_checkpointing=False, save_strategy="no", disable_tqdm=True, seed=0,
)
trainer = GRPOTrainer(
    model=load_pretrained(str(model_dir), dtype="float32"), reward_funcs=list(REWARD_FUNCS), args=args,
    train_dataset=dataset, processing_class=load_processor(str(model_dir)),
    peft_config=build_lora_config(get_preset("demo")),
)
trainer.remove_callback(PrinterCallback)  # its raw dicts; the rewards are printed below
trainer.train()
for entry in trainer.state.log_history:
    if "reward" in entry:
        print(json.dumps({k: round(v, 4) for k, v in entry.items() if k == "reward" or k.startswith("rewards/")}))
