"""Tensor parallelism (tutx.parallel.tensor_parallel & co): the split, its errors, and one 2-process run."""
import copy
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

from tutx.models import load_tiny
from tutx.parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    comm_per_token,
    dtensor_parallel_,
    plan_tensor_parallel,
    run_torchrun,
    shard_,
    tensor_parallel_,
)
from tutx.parallel.tensor_parallel import allgather_parallel_
from tutx.parallel.tp_demo import LOGITS_ATOL


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_tiny()
    ids = tokenizer("ROMEO:\nBut soft, what light", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    return model, ids, logits


@pytest.fixture
def world1(tmp_path):
    """A one-process gloo group for the test, destroyed afterwards."""
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


# --- the split and its communication (pure arithmetic) ---

def test_plan_splits_heads_and_replicates_kv_when_fewer_than_ranks(tiny):
    config = tiny[0].config  # 8 query heads, 2 KV heads, MLP 640
    two = plan_tensor_parallel(config, 2)
    assert (two.local_heads, two.local_kv_heads, two.local_intermediate_size) == (4, 1, 320)
    assert not two.kv_replicated and [two.kv_heads(r) for r in range(2)] == [range(0, 1), range(1, 2)]
    eight = plan_tensor_parallel(config, 8)
    assert eight.kv_replicated and eight.local_heads == 1
    assert [eight.kv_heads(r).start for r in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]  # query head i reads KV i // 4
    assert eight.q_rows(3) == (96, 128) and eight.kv_rows(5) == (32, 64)


@pytest.mark.parametrize("config, world, match", [
    ("Llama-2-70B", 3, "num_attention_heads"),
    (dict(hidden_size=96, num_attention_heads=12, num_key_value_heads=4, num_hidden_layers=1,
          intermediate_size=96), 6, "num_key_value_heads"),
    (dict(hidden_size=64, num_attention_heads=8, num_hidden_layers=1, intermediate_size=100), 8,
     "intermediate_size"),
])
def test_plan_rejects_world_sizes_that_do_not_divide(config, world, match):
    with pytest.raises(ValueError, match=f"world_size: {world} .*{match}"):
        plan_tensor_parallel(config, world)


@pytest.mark.parametrize("config, world, error", [
    ("Llama-2-7B", "2", TypeError), ("Llama-2-7B", True, TypeError), ("Llama-2-7B", 0, ValueError),
    (42, 2, TypeError), (dict(hidden_size=64), 2, TypeError), ("GPT-9", 2, ValueError),
])
def test_plan_bad_arguments(config, world, error):
    with pytest.raises(error, match="world_size|config|name"):
        plan_tensor_parallel(config, world)


def test_comm_per_token_megatron_against_allgather():
    tiny_fp32 = comm_per_token("Llama-2-7B", 2)
    assert tiny_fp32["collectives"] == 64 and tiny_fp32["payload_bytes"] == 2 * 32 * 4096 * 4
    seed = comm_per_token("Llama-2-70B", 8, torch.bfloat16, scheme="allgather")
    ours = comm_per_token("Llama-2-70B", 8, torch.bfloat16)
    assert seed["collectives"] == 7 * 80 and ours["collectives"] == 2 * 80
    assert seed["sent_per_rank_bytes"] > 2 * ours["sent_per_rank_bytes"]
    assert comm_per_token("Llama-2-7B", 1)["sent_per_rank_bytes"] == 0
    with pytest.raises(ValueError, match="scheme"):
        comm_per_token("Llama-2-7B", 2, scheme="ring")
    with pytest.raises(TypeError, match="dtype"):
        comm_per_token("Llama-2-7B", 2, dtype="bf16")


# --- errors without a process group ---

def test_needs_an_initialised_process_group(tiny):
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="group: torch.distributed is not initialised"):
        tensor_parallel_(copy.deepcopy(tiny[0]))
    with pytest.raises(RuntimeError, match="init_process_group"):
        ColumnParallelLinear.from_linear(nn.Linear(4, 4))
    with pytest.raises(RuntimeError, match="init_process_group"):
        dtensor_parallel_(copy.deepcopy(tiny[0]))


def test_bad_models_and_layers():
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        tensor_parallel_("llama")
    with pytest.raises(TypeError, match="model: expected a Llama-style"):
        tensor_parallel_(nn.Linear(4, 4))
    with pytest.raises(TypeError, match="linear: expected a torch.nn.Linear"):
        RowParallelLinear.from_linear(nn.Conv1d(4, 4, 1), cols=(0, 2))


# --- one process: a world of 1, and ranks of a larger world simulated one at a time ---

def test_world_of_one_matches_and_refuses_a_second_split(tiny, world1):
    model, ids, logits = tiny
    ours = tensor_parallel_(copy.deepcopy(model))
    theirs = dtensor_parallel_(copy.deepcopy(model))
    seed = allgather_parallel_(copy.deepcopy(model))
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, logits, atol=1e-5)
        assert torch.allclose(theirs(ids).logits, logits, atol=1e-5)
        assert torch.allclose(seed(ids).logits, logits, atol=1e-5)
    assert sum(m.allgather_calls for m in seed.modules() if isinstance(m, ColumnParallelLinear)) == 7 * 5
    with pytest.raises(ValueError, match="model: already tensor-parallel"):
        tensor_parallel_(ours)
    with pytest.raises(ValueError, match="rank"):
        shard_(copy.deepcopy(model), 2, 2)
    with pytest.raises(TypeError, match="rank"):
        shard_(copy.deepcopy(model), "0", 2)
    with pytest.raises(TypeError, match="group: expected None"):
        tensor_parallel_(copy.deepcopy(model), group="world")


@pytest.mark.parametrize("world", [2, 4, 8])
def test_rank_shards_sum_to_the_full_layer(tiny, world1, world):
    """Each rank's attention block and MLP output a partial sum; the all-reduce adds them. With 4 and
    8 ranks the 2 KV heads are replicated, so this checks the GQA mapping of query heads to KV heads."""
    model = tiny[0]
    torch.manual_seed(world)
    x = torch.randn(2, 7, model.config.hidden_size)  # [B, S, hidden]
    pos = model.model.rotary_emb(x, torch.arange(7)[None])
    layer = model.model.layers[1]
    with torch.no_grad():
        full_attn = layer.self_attn(x, position_embeddings=pos, attention_mask=None)[0]
        full_mlp = layer.mlp(x)
        attn = mlp = 0
        for rank in range(world):  # the world-1 group's all-reduce is the identity: partial sums come out
            part = shard_(copy.deepcopy(model), rank, world).model.layers[1]
            attn = attn + part.self_attn(x, position_embeddings=pos, attention_mask=None)[0]
            mlp = mlp + part.mlp(x)
    assert torch.allclose(attn, full_attn, atol=1e-5) and torch.allclose(mlp, full_mlp, atol=1e-5)


def test_parallel_linears_alone_and_their_gradients(world1):
    torch.manual_seed(0)
    linear = nn.Linear(6, 4)
    x = torch.randn(3, 6, requires_grad=True)
    with torch.no_grad():  # sharding under no_grad keeps the parameters trainable
        col = ColumnParallelLinear.from_linear(linear, gather_output=True)
        row = RowParallelLinear.from_linear(linear)
    assert col.weight.requires_grad and row.weight.requires_grad and row.bias.requires_grad
    assert torch.allclose(col(x), linear(x)) and torch.allclose(row(x), linear(x), atol=1e-6)
    assert row.allreduce_calls == 1 and row.allreduce_bytes == 3 * 4 * 4
    row(x).sum().backward()
    grad = x.grad.clone()
    x.grad = None
    linear(x).sum().backward()
    assert torch.allclose(grad, x.grad) and torch.allclose(row.weight.grad, linear.weight.grad)


# --- launcher ---

def test_run_torchrun_bad_arguments_and_timeout(tmp_path):
    with pytest.raises(TypeError, match="args"):
        run_torchrun("tutx.parallel.tp_demo", "--no-dtensor")
    with pytest.raises(ValueError, match="nproc"):
        run_torchrun("tutx.parallel.tp_demo", nproc=0)
    script = tmp_path / "sleep.py"
    script.write_text("import time\ntime.sleep(600)\n")
    with pytest.raises(TimeoutError, match="timeout: torchrun"):
        run_torchrun(str(script), nproc=1, timeout=3)
    if sys.platform.startswith("linux"):  # nothing left behind: no process runs the script any more
        from pathlib import Path

        left = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if str(script).encode() in cmdline.read_bytes():
                    left.append(cmdline.parent.name)
            except OSError:  # the process ended while we looked
                continue
        assert not left, f"processes left running: {left}"


# --- the real thing: 2 processes, gloo ---

@pytest.mark.skipif(sys.platform == "win32", reason="torchrun process groups are POSIX here")
def test_two_process_gloo_run_matches_unsharded_and_dtensor(tiny):
    model = tiny[0]
    reports = run_torchrun("tutx.parallel.tp_demo", ["--new-tokens", "4", "--allreduce-iters", "5", "--timing-repeats", "1"],
                           nproc=2, timeout=240)
    layers = model.config.num_hidden_layers
    for rank, r in enumerate(reports):
        assert (r["rank"], r["world_size"], r["backend"]) == (rank, 2, "gloo")
        assert r["max_abs_diff_tp"] <= LOGITS_ATOL and r["max_abs_diff_dtensor"] <= LOGITS_ATOL
        assert r["max_abs_diff_tp_vs_dtensor"] <= LOGITS_ATOL
        assert r["grad_rel_diff_tp"] <= LOGITS_ATOL  # training through the shards: Megatron's f and g
        assert len(r["tokens_ref"]) == 4 and r["tokens_tp"] == r["tokens_ref"] == r["tokens_dtensor"]
        assert 2 * r["params"]["sharded_local"] == r["params"]["sharded_full"]
        assert r["allreduce_calls_per_forward"] == 2 * layers
        assert r["allreduce_bytes_per_token"] == comm_per_token(model.config, 2)["payload_bytes"]
        assert r["allreduce_decode_us"] > 0
        assert r["max_abs_diff_allgather"] <= LOGITS_ATOL and r["tokens_allgather"] == r["tokens_ref"]
        assert r["allgather_calls_per_forward"] == 7 * layers
        assert r["allgather_bytes_per_token"] == comm_per_token(model.config, 2, scheme="allgather")["payload_bytes"]
        assert set(r["ms_per_token"]) == {"unsharded", "megatron", "allgather"}
    assert reports[0]["tokens_tp"] == reports[1]["tokens_tp"]


def test_draw_tensor_parallel(tiny):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tutx.parallel.tp_figure import draw_tensor_parallel

    fig = draw_tensor_parallel(plan_tensor_parallel(tiny[0].config, 4))
    assert len(fig.axes) == 7 and any("copies" in t.get_text() for t in fig.axes[1].texts)
    plt.close(fig)
    with pytest.raises(TypeError, match="plan"):
        draw_tensor_parallel(4)


def test_write_report_prints_without_a_folder_and_writes_with_one(tmp_path, monkeypatch, capsys):
    from tutx.parallel.launch import REPORT_DIR_ENV, write_report

    monkeypatch.delenv(REPORT_DIR_ENV, raising=False)
    assert write_report({"rank": 0}) is None and '"rank": 0' in capsys.readouterr().out
    monkeypatch.setenv(REPORT_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    assert write_report({"rank": 1}) == tmp_path / "rank1.json"


@pytest.mark.parametrize("kind", ["qwen2", "mistral"])
def test_other_llama_style_models_split_too(world1, kind):
    """Qwen2 (q/k/v biases, split with their rows) and Mistral: shards of a random small model sum to
    the full attention block and MLP, and a world of one gives the same logits."""
    import transformers

    cls, config_cls = {"qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config),
                       "mistral": (transformers.MistralForCausalLM, transformers.MistralConfig)}[kind]
    torch.manual_seed(0)
    model = cls(config_cls(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2)).eval()
    x = torch.randn(1, 5, 64)  # [B, S, hidden]
    pos = model.model.rotary_emb(x, torch.arange(5)[None])
    with torch.no_grad():
        layer = model.model.layers[0]
        full = layer.self_attn(x, position_embeddings=pos, attention_mask=None)[0] + layer.mlp(x)
        parts = 0
        for rank in range(4):
            part = shard_(copy.deepcopy(model), rank, 4).model.layers[0]
            parts = parts + part.self_attn(x, position_embeddings=pos, attention_mask=None)[0] + part.mlp(x)
        ids = torch.arange(10)[None]
        assert torch.allclose(tensor_parallel_(copy.deepcopy(model))(ids).logits, model(ids).logits, atol=1e-5)
    assert torch.allclose(parts, full, atol=1e-5)
