"""The library behind the CLI: validate, train, sample and evaluate from Python (runs on the demo data).

    docval-sft make-demo-data demo-out && python examples/python_api.py
"""

from pathlib import Path

from docval_sft.evaluate import evaluate
from docval_sft.inference import load_student
from docval_sft.sample import sample
from docval_sft.train import resolve_run, train
from docval_sft.validate import validate_data

demo = Path("demo-out")
report = validate_data(demo / "D3_train.json", demo / "images", val_data=demo / "D4_val.json")
print({name: split["usable"] for name, split in report.to_dict()["splits"].items()})

run = resolve_run("demo", overrides={"max_steps": 8}, run_values={
    "train_data": demo / "D3_train.json", "val_data": demo / "D4_val.json", "image_dir": demo / "images",
    "output_dir": demo / "api-run"})
result = train(run, overwrite=True)
print("final adapter:", result.final_dir)

student = load_student(None, result.final_dir)
answer = sample(student, next((demo / "images" / "CORD").glob("receipt_0*.png")), "What is the total amount?",
                max_new_tokens=32)
print(answer.parsed.error or answer.parsed.answer)

summary = evaluate(None, result.final_dir, demo / "D_test.json", demo / "images", demo / "api-eval",
                   limit=4, max_new_tokens=32, resume=True).summary
print({k: summary[k] for k in ("total_examples", "avg_anls", "avg_iou", "cot_compliance")})
