from transformers import AutoProcessor, AutoModelForImageTextToText
from peft import PeftModel
from PIL import Image

# Load base model
base_model = AutoModelForImageTextToText.from_pretrained("google/gemma-3-12b-it")

# Load LoRA adapter
model = PeftModel.from_pretrained(base_model, "docval/models/student_b1/final")
processor = AutoProcessor.from_pretrained("docval/models/student_b1/final")

# Test
image = Image.open("path/to/document.png")
question = "What is the total amount?"

messages = [{
    "role": "user",
    "content": [
        {"type": "image"},
        {"type": "text", "text": question}
    ]
}]

inputs = processor.apply_chat_template(
    messages,
    images=[image],
    add_generation_prompt=True,
    tokenize=True,
    return_dict=True,
    return_tensors="pt"
).to(model.device)

outputs = model.generate(**inputs, max_new_tokens=1024)
response = processor.decode(outputs[0][inputs["input_ids"].shape[-1]:])
print(response)
