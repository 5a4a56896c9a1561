"""Without Triton (macOS, Windows) the Chapter 5 wrappers run their references, gradients included."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(r'''
    import sys
    sys.modules["triton"] = None  # import triton -> ImportError
    import torch
    from tutx.kernels import (layer_norm, layer_norm_ref, matmul, matmul_ref, naive_fused_attention,
                              naive_fused_attention_ref, rms_norm, rms_norm_ref, softmax, softmax_ref, swiglu,
                              swiglu_ref)
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 8, generator=g, requires_grad=True), torch.randn(8, generator=g), torch.randn(8, generator=g)
    same = torch.testing.assert_close
    same(softmax(x), softmax_ref(x))
    same(rms_norm(x, w), rms_norm_ref(x, w))
    same(layer_norm(x, w, b), layer_norm_ref(x, w, b))
    same(swiglu(x, x), swiglu_ref(x, x))
    same(matmul(x, x.t(), "silu"), matmul_ref(x, x.t(), "silu"))
    layer_norm(x, w, b).sum().backward()
    assert x.grad is not None
    q = torch.randn(1, 2, 40, 16, generator=g)
    same(naive_fused_attention(q, q, q), naive_fused_attention_ref(q, q, q))
    print("ok")
''')


def test_chapter5_wrappers_fall_back_to_references_without_triton():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_no_module_is_named_like_a_public_function():
    """Importing ``tutx.kernels.X`` sets the package attribute X to the module, hiding a function X."""
    import pkgutil

    import tutx.kernels

    modules = {info.name for info in pkgutil.iter_modules(tutx.kernels.__path__)}
    assert not modules & set(tutx.kernels.__all__)
    import tutx.kernels.fused_softmax  # noqa: F401
    assert callable(tutx.kernels.softmax) and tutx.kernels.softmax.__name__ == "softmax"
