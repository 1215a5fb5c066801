"""Run by tests/export/test_transformers.py in its own process (torch's Triton and jaxlib or
TensorFlow crash when loaded into one): load an export with transformers, print JSON with the
model class, the token ids and decoded text of TEXT, the logits of those ids, and the length of a
short greedy generation.

    python tests/export/transformers_logits.py EXPORT_DIR TEXT
"""

import json
import sys

import torch
import transformers


def main(directory: str, text: str) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    model.eval()
    ids = tokenizer(text)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
        generated = model.generate(**tokenizer(text, return_tensors="pt"), max_new_tokens=4,
                                   do_sample=False)
    print(json.dumps({"class": type(model).__name__, "transformers": transformers.__version__,
                      "ids": ids, "decoded": tokenizer.decode(ids), "logits": logits.tolist(),
                      "generated": generated.shape[1]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
