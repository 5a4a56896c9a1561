"""Device maps: planning on meta models, KV reserve, tied weights, errors, dispatch, accelerate parity."""
import math

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from tutx.configs import get_spec, to_hf_config
from tutx.models.tiny import load_tiny
from tutx.parallel import DevicePlan, dispatch_, parse_size, plan_device_map, torch_device
from tutx.parallel.devices import format_bytes as _fmt

GiB = 2**30


def meta_model(name):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(to_hf_config(name))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama7b():
    return meta_model("Llama-2-7B")


@pytest.fixture
def tiny():
    model, tokenizer = load_tiny()
    tokenizer.padding_side = "left"
    return model, tokenizer


def tensor_bytes(model, dtype=None):
    """Every parameter and buffer once (named_parameters de-duplicates tied weights)."""
    tensors = [t for _, t in model.named_parameters()] + [t for _, t in model.named_buffers()]
    return sum(t.numel() * (dtype.itemsize if dtype else t.element_size()) for t in tensors)


def check_consistent(plan, num_layers):
    """Budgets respected, layers contiguous and in device order, each placed once."""
    order = [i for label in plan.budgets for i in plan.layers[label]]
    assert order == list(range(num_layers))
    for label, budget in plan.budgets.items():
        assert plan.used(label) <= budget
        assert plan.kv_bytes[label] == len(plan.layers[label]) * plan.kv_per_layer
        for i in plan.layers[label]:
            assert plan.placement[f"model.layers.{i}"] == label


# ---- sizes and budgets ------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("10GiB", 10 * GiB), ("500MB", 500 * 10**6), ("1.5 GB", 1_500_000_000), ("64kib", 65536),
    ("123", 123), ("7B", 7), (4096, 4096), (0, 0),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["ten GB", "10 GX", "", "GiB", "-1GB", "1e3MB", -5])
def test_parse_size_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="budget"):
        parse_size(bad, "budget")


@pytest.mark.parametrize("bad", [1.5, True, None, [1]])
def test_parse_size_rejects_bad_types(bad):
    with pytest.raises(TypeError, match="expected bytes"):
        parse_size(bad)


def test_bad_budgets(llama7b):
    with pytest.raises(ValueError, match=r"budgets\['cuda:0'\]='lots'"):
        plan_device_map(llama7b, {"cuda:0": "lots"})
    with pytest.raises(ValueError, match="device key 'gpu0' not understood"):
        plan_device_map(llama7b, {"gpu0": "10GiB"})
    with pytest.raises(ValueError, match="given twice"):
        plan_device_map(llama7b, {0: "10GiB", "cuda:0": "10GiB"})
    with pytest.raises(TypeError, match="non-empty dict"):
        plan_device_map(llama7b, {})
    with pytest.raises(TypeError, match="non-empty dict"):
        plan_device_map(llama7b, ["cuda:0"])


def test_int_keys_and_disk_last(llama7b):
    plan = plan_device_map(llama7b, {"disk": "100GiB", 0: "5GiB", "cpu": "5GiB"}, dtype="fp16")
    assert list(plan.budgets) == ["cuda:0", "cpu", "disk"]
    check_consistent(plan, 32)
    assert plan.device_map["model.embed_tokens"] == 0  # accelerate's format: GPU index as an int
    assert plan.device_map["lm_head"] == "disk" == plan.device_map["model.norm"]


# ---- planning -----------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["name", "config", "dict", "model"])
def test_plan_accepts_models_and_configs(source, llama7b):
    arg = {"name": "Llama-2-7B", "config": to_hf_config("Llama-2-7B"), "model": llama7b,
           "dict": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "intermediate_size": 11008}}[source]
    plan = plan_device_map(arg, {"cuda:0": "8GiB", "cuda:1": "8GiB"}, dtype=torch.bfloat16)
    assert plan.layers_per_device() == plan_device_map(
        llama7b, {"cuda:0": "8GiB", "cuda:1": "8GiB"}, dtype="bf16").layers_per_device()


def test_70b_on_meta_accounts_every_byte():
    model = meta_model("Llama-2-70B")
    budgets = {"cuda:0": "40GiB", "cuda:1": "40GiB", "cuda:2": "40GiB", "cpu": "100GiB"}
    plan = plan_device_map(model, budgets, dtype=torch.bfloat16)
    check_consistent(plan, 80)
    spec = get_spec("Llama-2-70B")
    assert sum(plan.weight_bytes.values()) == spec.weight_bytes("bf16") + tensor_bytes(model.model.rotary_emb, torch.bfloat16)
    assert plan.placement["model.embed_tokens"] == "cuda:0"
    last = [label for label in plan.budgets if plan.layers[label]][-1]
    assert plan.placement["model.norm"] == plan.placement["lm_head"] == last
    # greedy: each device but the last used could not take the next layer
    for label in list(plan.budgets)[:2]:
        nxt = plan.layers[label][-1] + 1
        layer = tensor_bytes(model.model.layers[nxt], torch.bfloat16)
        assert plan.used(label) + layer > plan.budgets[label]


def test_kv_reserve_matches_scaling_and_costs_layers(llama7b):
    budgets = {"cuda:0": "8GiB", "cuda:1": "8GiB", "cpu": "32GiB"}
    none = plan_device_map(llama7b, budgets, dtype="fp16")
    kv = dict(batch=8, seq_len=2048, dtype="fp16")
    plan = plan_device_map(llama7b, budgets, reserve_kv=kv, dtype="fp16")
    spec = get_spec("Llama-2-7B")
    assert plan.kv_per_layer == 2 * 8 * 2048 * 32 * 128 * 2 == spec.kv_cache_bytes(8, 2048, "fp16") / 32
    check_consistent(plan, 32)
    assert plan.layers_per_device()["cuda:0"] < none.layers_per_device()["cuda:0"]
    assert sum(plan.kv_bytes.values()) == spec.kv_cache_bytes(8, 2048, "fp16")
    # default KV dtype: the weights' dtype; a total in bytes is shared evenly by the layers
    assert plan_device_map(llama7b, budgets, reserve_kv=dict(batch=8, seq_len=2048), dtype="fp16").kv_per_layer \
        == plan.kv_per_layer
    assert plan_device_map(llama7b, budgets, reserve_kv="1GiB").kv_per_layer == math.ceil(GiB / 32)
    assert plan_device_map(llama7b, budgets, reserve_kv=0).kv_per_layer == 0


def test_gqa_kv_reserve_uses_kv_heads():
    plan = plan_device_map("Llama-3.1-8B", {"cuda:0": "80GiB"}, reserve_kv=dict(batch=1, seq_len=1000), dtype="bf16")
    assert plan.kv_per_layer == 2 * 1000 * 8 * 128 * 2


def test_tied_lm_head_goes_with_embeddings_and_counts_once(tiny):
    model, _ = tiny
    assert model.lm_head.weight is model.model.embed_tokens.weight
    plan = plan_device_map(model, {"cpu:0": "8MB", "cpu:1": "3MB", "cpu:2": "8MB"})
    check_consistent(plan, 5)
    assert plan.placement["lm_head"] == plan.placement["model.embed_tokens"] == "cpu:0"
    assert plan.placement["model.norm"] == "cpu:2"
    assert sum(plan.weight_bytes.values()) == tensor_bytes(model)
    assert set(plan.device_map) == {"model.embed_tokens", "model.rotary_emb", "lm_head", "model.norm",
                                    *(f"model.layers.{i}" for i in range(5))}


def test_gpt2_layout():
    plan = plan_device_map("GPT-2", {"cuda:0": "300MB", "cuda:1": "300MB"})
    assert plan.placement["transformer.wte"] == plan.placement["lm_head"] == "cuda:0"  # tied
    assert plan.placement["transformer.ln_f"] == "cuda:1"
    assert [n for n in plan.placement if n.startswith("transformer.h.")][-1] == "transformer.h.11"


def test_summary_and_repr(llama7b):
    plan = plan_device_map(llama7b, {"cuda:0": "8GiB", "cpu": "32GiB"}, reserve_kv=dict(batch=1, seq_len=4096),
                           dtype="fp16")
    text = plan.summary()
    assert text.splitlines()[0].split() == ["device", "budget", "layers", "weights", "KV", "cache", "headroom", "free"]
    assert "cuda:0" in text and "model.embed_tokens → cuda:0" in text and "lm_head → cpu" in text
    assert repr(plan).startswith("DevicePlan(32 layers → cuda:0: ")
    assert isinstance(plan, DevicePlan)


# ---- failures -----------------------------------------------------------------------------------
def test_model_does_not_fit_says_by_how_much(tiny):
    model, _ = tiny
    total = tensor_bytes(model)
    with pytest.raises(ValueError, match=r"does not fit.*short by 1000 B \(raise budgets\['cpu:0'\]"):
        plan_device_map(model, {"cpu:0": total - 1000})
    budgets = {"cpu:0": total // 2, "cpu:1": total // 2}  # the layers do not pack: more is needed
    with pytest.raises(ValueError, match=r"short by .* \(([\d,]+) B\) \(raise budgets\['cpu:1'\]") as err:
        plan_device_map(model, budgets)
    short = int(err.value.args[0].split(" (")[-2].split(" B)")[0].replace(",", ""))
    assert short > total - 2 * (total // 2)
    plan_device_map(model, {**budgets, "cpu:1": budgets["cpu:1"] + short})  # raising by that much fits
    with pytest.raises(ValueError, match="short by 1 B"):
        plan_device_map(model, {**budgets, "cpu:1": budgets["cpu:1"] + short - 1})


def test_budget_that_cannot_hold_a_layer(llama7b):
    with pytest.raises(ValueError, match=r"budgets\['cuda:1'\]=100.00 MiB: cannot hold a single decoder layer "
                                         r"\(386.02 MiB of weights\); short by 286.02 MiB"):
        plan_device_map(llama7b, {"cuda:0": "4GiB", "cuda:1": "100MiB", "cpu": "100GiB"}, dtype="fp16")
    with pytest.raises(ValueError, match=r"budgets\['cuda:0'\]=.*the first device holds the embeddings"):
        plan_device_map(llama7b, {"cuda:0": "100MiB", "cpu": "100GiB"}, dtype="fp16")
    kv = dict(batch=64, seq_len=4096, dtype="fp16")  # 4 GiB of KV per layer
    with pytest.raises(ValueError, match=r"budgets\['cuda:0'\].*\+ 4.00 GiB of KV cache\) next to the"):
        plan_device_map(llama7b, {"cuda:0": "4GiB", "cpu": "1000GiB"}, reserve_kv=kv, dtype="fp16")


@pytest.mark.parametrize("reserve, error, match", [
    (dict(batch=1), ValueError, "expected the keys batch and seq_len"),
    (dict(batch=1, seq_len=8, dtyp="fp16"), ValueError, "expected the keys"),
    (dict(batch=0, seq_len=8), ValueError, r"reserve_kv\['batch'\]: expected an int >= 1, got 0"),
    (dict(batch=1, seq_len=8, dtype="int3"), ValueError, r"reserve_kv\['dtype'\]='int3'"),
    ("lots", ValueError, "reserve_kv='lots'"),
    (-1, ValueError, "reserve_kv=-1"),
    ([1, 2], TypeError, "reserve_kv=\\[1, 2\\]"),
])
def test_bad_reserve_kv(llama7b, reserve, error, match):
    with pytest.raises(error, match=match):
        plan_device_map(llama7b, {"cuda:0": "80GiB"}, reserve_kv=reserve)


def test_bad_model_and_dtype(llama7b):
    with pytest.raises(TypeError, match="model_or_config"):
        plan_device_map(42, {"cpu": "1GiB"})
    with pytest.raises(ValueError, match="model_type"):
        plan_device_map({"hidden_size": 8}, {"cpu": "1GiB"})
    with pytest.raises(TypeError, match="decoder layers are an nn.ModuleList"):
        plan_device_map(nn.Linear(4, 4), {"cpu": "1GiB"})
    with pytest.raises(ValueError, match="dtype='fp64'"):
        plan_device_map(llama7b, {"cpu": "100GiB"}, dtype="fp64")


# ---- accelerate parity --------------------------------------------------------------------------
def accelerate_layers(device_map, num_layers):
    """Decoder layer indices per device in accelerate's (cleaned) map: the longest matching prefix wins."""
    out = {}
    for i in range(num_layers):
        name = f"model.layers.{i}"
        key = max((k for k in device_map if k == "" or name == k or name.startswith(k + ".")), key=len)
        out.setdefault(device_map[key], []).append(i)
    return out


@pytest.mark.parametrize("gib", [(4, 5, 8), (3, 3, 20), (6, 6, 6), (1, 7, 7)])
def test_matches_accelerate(llama7b, gib):
    """accelerate keeps room for the largest layer on the first GPU and the CPU (to stream offloaded
    layers back in); we do not. So with equal budgets our first GPU may take one layer more and every
    device differs by at most one layer; give us those budgets less one layer and the maps agree exactly."""
    accelerate = pytest.importorskip("accelerate", reason="accelerate is not installed")
    budgets = [g * GiB for g in gib]
    theirs = accelerate.infer_auto_device_map(
        llama7b, max_memory={0: budgets[0], 1: budgets[1], "cpu": budgets[2]},
        no_split_module_classes=["LlamaDecoderLayer"], dtype=torch.float16)
    theirs = accelerate_layers(theirs, 32)
    ours = plan_device_map(llama7b, {"cuda:0": budgets[0], "cuda:1": budgets[1], "cpu": budgets[2]},
                           reserve_kv=0, dtype=torch.float16)
    for label, value in (("cuda:0", 0), ("cuda:1", 1), ("cpu", "cpu")):
        assert abs(len(ours.layers[label]) - len(theirs.get(value, []))) <= 1
    layer = tensor_bytes(llama7b.model.layers[0], torch.float16)
    ours = plan_device_map(llama7b, {"cuda:0": budgets[0] - layer, "cuda:1": budgets[1], "cpu": budgets[2] - layer},
                           dtype=torch.float16)
    assert {ours.device_map[f"model.layers.{idx[0]}"]: idx for idx in ours.layers.values() if idx} == theirs


# ---- dispatch -----------------------------------------------------------------------------------
def test_dispatch_on_simulated_devices_matches_unsharded(tiny):
    model, tokenizer = tiny
    batch = tokenizer(["ROMEO: what say you", "JULIET:"], return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = model(**batch).logits
        reference_gen = model.generate(**batch, max_new_tokens=8, do_sample=False)
    plan = plan_device_map(model, {"cpu:0": "8MB", "cpu:1": "3MB", "cpu:2": "8MB"})
    assert plan.layers_per_device() == {"cpu:0": 1, "cpu:1": 1, "cpu:2": 3}
    state = dispatch_(model, plan)
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-6)
    # embeddings, rotary, layer 0 on cpu:0 → layer 1 on cpu:1 → layers 2-4 and norm on cpu:2 → tied lm_head on cpu:0
    assert state.trace == ["cpu:0"] * 3 + ["cpu:1"] + ["cpu:2"] * 4 + ["cpu:0"]
    assert state.hops == 3
    assert model.hf_device_map == plan.device_map
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert torch.equal(generated, reference_gen)
    again = dispatch_(model, plan)  # replaces the first hooks instead of stacking them
    assert state.handles == [] and len(again.handles) == len(plan.placement) + 2
    again.remove()
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert "hops" in repr(again)


def test_dispatch_errors(tiny, llama7b):
    model, _ = tiny
    plan = plan_device_map(model, {"cpu:0": "1GiB"})
    with pytest.raises(ValueError, match="disk"):
        dispatch_(model, plan_device_map(model, {"cpu:0": "8MB", "disk": "1GiB"}))
    with pytest.raises(ValueError, match="meta device"):
        dispatch_(llama7b, plan_device_map(llama7b, {"cpu": "100GiB"}))
    other = nn.Module()
    other.layers = nn.ModuleList([nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="another model; this one has no module 'model.embed_tokens'"):
        dispatch_(other, plan)
    with pytest.raises(TypeError, match="plan: expected a DevicePlan"):
        dispatch_(model, plan.device_map)
    if torch.cuda.device_count() < 8:
        with pytest.raises(ValueError, match="'cuda:7'"):
            torch_device("cuda:7")
    with pytest.raises(ValueError, match="'disk'"):
        torch_device("disk")
    assert _fmt(1536) == "1.50 KiB"


@pytest.mark.gpu
def test_dispatch_gpu_and_cpu(tiny):
    model, tokenizer = tiny
    batch = tokenizer(["ROMEO: what say you", "JULIET:"], return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = model(**batch).logits
    dispatch_(model, plan_device_map(model, {"cuda:0": "8MB", "cpu": "1GiB"}))
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.device.type == "cpu"  # outputs come back to the inputs' device
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)


def test_headroom_keeps_part_of_each_gpu_free():
    """A fraction of every GPU budget stays out of the plan (activations, CUDA context); CPU budgets do not."""
    budgets = {"cuda:0": "80GiB", "cuda:1": "80GiB", "cpu": "256GiB"}
    kv = dict(batch=8, seq_len=8192)
    full = plan_device_map("Llama-3.1-70B", budgets, reserve_kv=kv, dtype="bf16")
    kept = plan_device_map("Llama-3.1-70B", budgets, reserve_kv=kv, dtype="bf16", headroom=0.1)
    assert kept.reserved == {"cuda:0": 8 * 2**30, "cuda:1": 8 * 2**30, "cpu": 0}
    assert all(kept.free(d) >= 0 for d in kept.budgets)
    assert kept.layers_per_device()["cpu"] > full.layers_per_device()["cpu"]
    assert "8.00 GiB" in kept.summary()
    with pytest.raises(ValueError, match="keeps headroom=0.1 of its budget free"):
        plan_device_map("Llama-3.1-70B", {"cuda:0": "80GiB", "cuda:1": "80GiB"}, reserve_kv=kv, dtype="bf16",
                        headroom=0.1)
    with pytest.raises(ValueError, match="headroom"):
        plan_device_map("Llama-3.1-70B", budgets, headroom=1.5)
    with pytest.raises(TypeError, match="headroom"):
        plan_device_map("Llama-3.1-70B", budgets, headroom="10%")
