"""``import tutx.quant`` and quantizing the tiny model work where Triton is not installed (macOS laptops).

A subprocess hides Triton (``sys.modules["triton"] = None`` makes ``import triton`` fail) before
anything imports it; the quantized modules then run their PyTorch reference.
"""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(r'''
    import sys
    sys.modules["triton"] = None  # import triton -> ImportError
    import copy
    import torch
    import tutx.quant
    from tutx.models import load_tiny
    from tutx.quant import Int4WeightOnly, Int8DynamicActivationInt8Weight, Int8WeightOnly, quantize_
    assert sys.modules["triton"] is None
    model, tok = load_tiny()
    x = tok("To be, or not to be", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(x).logits
        for config in (Int8WeightOnly(), Int8DynamicActivationInt8Weight(), Int4WeightOnly(128)):
            q = quantize_(copy.deepcopy(model), config)
            err = float((q(x).logits - ref).abs().max() / ref.abs().max())
            assert err < 0.2, (config, err)
    print("ok")
''')


def test_quantize_the_tiny_model_without_triton():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
