"""Shared by the static- and dynamic-batching tests: prompts of different lengths and the reference
they are compared with (Hugging Face ``generate`` on one unpadded prompt)."""
import torch

PROMPTS = ["ROMEO: what say you, my lord?", "JULIET:", "To be or", "KING HENRY: Once more unto the breach, dear"]


def alone(model, prompt, max_new_tokens):
    """Hugging Face generate on one unpadded prompt: the reference."""
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(prompt):].tolist()
