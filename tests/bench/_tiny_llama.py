"""A random, very small Llama for the benchmark tests (fast on any CPU)."""
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(vocab: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=8,
                      max_position_embeddings=512, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()
