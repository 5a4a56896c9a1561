"""A random 2-layer Llama (GQA 4/2, hidden 64, vocab 96) for the quantization tests: fast, and real HF code."""
import torch
import transformers


def tiny_llama(seed=0, tie=True, hidden=64):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=hidden, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=tie)
    return transformers.LlamaForCausalLM(cfg).eval()
