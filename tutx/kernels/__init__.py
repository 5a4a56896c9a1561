"""Triton kernels. Each module holds a triple: ``<op>_kernel`` (``@triton.jit``), ``<op>(...)`` —
the wrapper users call, which checks its inputs and launches the kernel on CUDA tensors (or on
CPU tensors through Triton's interpreter when ``TRITON_INTERPRET=1``) and otherwise runs the
reference — and ``<op>_ref(...)``, the same operation in plain PyTorch.
"""
