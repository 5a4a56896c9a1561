"""Decode steps without launch overhead: CUDA graphs on a GPU, ``torch.compile`` on a CPU.

A decode step of a small model launches hundreds of tiny kernels; on a GPU each launch costs a few
microseconds of CPU time (Python, the dispatcher, the driver) while the kernel itself may run for
less. Two cures, both need *static shapes*:

- **CUDA graphs** (as nano-vllm's ``capture_cudagraph``): run the step once under
  ``torch.cuda.graph`` per batch size in a short list (1, 2, 4, 8, 16, ...), recording every
  kernel with its pointers into fixed input and output buffers. A step of ``B`` sequences copies
  its inputs into the buffers of the smallest captured size ``>= B`` (the padded rows write their
  keys and values into a scratch block no sequence owns) and replays the graph: one launch.
- **torch.compile** (inductor, on a CPU): fuses the elementwise work into a few C++ loops and
  removes most of the per-op dispatch. Compiled with ``dynamic=False`` once per padded batch
  size; only the block tables' width (the step's longest context, in blocks) is marked dynamic,
  so a step never recompiles for a longer context.

Either way the step falls back to eager (with a warning, once) when it cannot run: no compiler,
a failed capture, or a batch larger than the largest size captured.
"""
from __future__ import annotations

import warnings

import torch

DEFAULT_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def graph_batch_sizes(max_num_seqs: int, sizes=None) -> tuple[int, ...]:
    """The batch sizes to capture: ``sizes`` (sorted, deduplicated) or powers of two up to
    ``max_num_seqs``, with ``max_num_seqs`` itself last so every batch the scheduler forms fits."""
    if sizes is None:
        sizes = [s for s in DEFAULT_SIZES if s < max_num_seqs] + [max_num_seqs]
    return tuple(sorted(set(sizes)))


def bucket(batch_size: int, sizes) -> int | None:
    """The smallest size in ``sizes`` that holds ``batch_size``, or None when none does."""
    for s in sorted(sizes):
        if s >= batch_size:
            return s
    return None


class StaticDecode:
    """A runner's decode step on padded, fixed-shape inputs (shared by both back ends).

    ``forward(input_ids [P], positions [P], slots [P], block_tables [P, W], lengths [P])`` gives fp32
    logits ``[P, V]`` for a padded batch of ``P`` rows; ``W`` is the most blocks a sequence can use.
    Padded rows read one token from the scratch block (id ``runner.num_blocks``) and write there.
    """

    def __init__(self, runner, sizes):
        self.runner = runner
        self.sizes = tuple(sizes)
        self.width = -(-runner.max_model_len // runner.block_size)  # W: blocks of the longest context
        self.scratch = runner.num_blocks  # the pool has one block more than the block manager hands out
        self.graph_steps = 0  # decode steps served by this back end
        self.eager_steps = 0  # decode steps that fell back to eager
        self._warned = False

    def forward(self, input_ids, positions, slots, block_tables, lengths) -> torch.Tensor:
        from tutx.engine.model_runner import AttentionMetadata

        meta = AttentionMetadata(False, input_ids, positions, slots, block_tables=block_tables, lengths=lengths)
        return self.runner.decode_logits(meta)

    def pad(self, meta, size: int, width: int | None = None):
        """The step's tensors padded to ``size`` rows and ``width`` blocks (None: ``self.width``)."""
        b, w, dev = meta.input_ids.shape[0], meta.block_tables.shape[1], meta.input_ids.device
        scratch_slot = self.scratch * self.runner.block_size
        tables = torch.full((size, width or self.width), self.scratch, dtype=torch.int32, device=dev)  # [P, W]
        tables[:b, :w] = meta.block_tables
        ids = torch.zeros(size, dtype=meta.input_ids.dtype, device=dev)
        ids[:b] = meta.input_ids
        pos = torch.zeros(size, dtype=meta.positions.dtype, device=dev)
        pos[:b] = meta.positions
        slots = torch.full((size,), scratch_slot, dtype=meta.slots.dtype, device=dev)
        slots[:b] = meta.slots
        lengths = torch.ones(size, dtype=torch.int32, device=dev)
        lengths[:b] = meta.lengths
        return ids, pos, slots, tables, lengths

    def pad_width(self, meta) -> int | None:
        """Blocks per row of the padded tables (None: the longest context's)."""
        return None

    def warn(self, why: str) -> None:
        if not self._warned:
            warnings.warn(f"enforce_eager=False: {why}; running the decode step eagerly", RuntimeWarning,
                          stacklevel=3)
            self._warned = True

    def __call__(self, meta) -> torch.Tensor | None:
        """Logits ``[B, V]`` of the step, or None when the caller must run it eagerly."""
        size = bucket(meta.input_ids.shape[0], self.sizes)
        if size is None:
            self.eager_steps += 1
            return None
        out = self.run_padded(size, self.pad(meta, size, self.pad_width(meta)))
        if out is None:
            self.eager_steps += 1
            return None
        self.graph_steps += 1
        return out[:meta.input_ids.shape[0]]


class CompiledDecode(StaticDecode):
    """``torch.compile(dynamic=False)`` of the decode step, one compiled function per padded size.

    ``num_compiles`` counts the graphs inductor compiled (one per size used, plus one per graph
    break); a recompile would show up there.
    """

    def __init__(self, runner, sizes, mode: str | None = None):
        super().__init__(runner, sizes)
        self.num_compiles = 0
        self.mode = mode
        self._fns: dict[int, object] = {}
        self._failed = False

    def pad_width(self, meta) -> int:
        # The tables keep this step's width, a dimension marked dynamic: one compile serves every
        # context length, and no row attends over more blocks than the step's longest needs.
        return meta.block_tables.shape[1]

    def _backend(self, gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        self.num_compiles += 1
        return compile_fx(gm, example_inputs)

    def run_padded(self, size, args):
        if self._failed:
            return None
        fn = self._fns.get(size)
        if fn is None:  # one compiled function per size: its cache never sees another shape
            fn = self._fns[size] = torch.compile(self.forward, backend=self._backend, dynamic=False)
        torch._dynamo.mark_dynamic(args[3], 1)  # block_tables [P, W]: W varies
        try:
            return fn(*args)
        except Exception as exc:  # no C++ compiler, an op inductor cannot lower, ...
            self._failed = True
            self.warn(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            return None


class CUDAGraphDecode(StaticDecode):
    """The decode step captured as one CUDA graph per batch size, replayed on static buffers."""

    def __init__(self, runner, sizes):
        super().__init__(runner, sizes)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.buffers = None
        self._failed = False

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every size, largest first, sharing one memory pool (as nano-vllm does)."""
        p, dev = max(self.sizes), self.runner.device
        self.buffers = (torch.zeros(p, dtype=torch.long, device=dev), torch.zeros(p, dtype=torch.long, device=dev),
                        torch.full((p,), self.scratch * self.runner.block_size, dtype=torch.long, device=dev),
                        torch.full((p, self.width), self.scratch, dtype=torch.int32, device=dev),
                        torch.ones(p, dtype=torch.int32, device=dev))
        pool = None
        try:
            for size in sorted(self.sizes, reverse=True):
                args = [buf[:size] for buf in self.buffers]
                self.forward(*args)  # warm-up: lazy initialisation and autotuning happen outside the capture
                torch.cuda.synchronize(dev)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool):
                    self.outputs[size] = self.forward(*args)  # [size, V], written by every replay
                pool = graph.pool() if pool is None else pool
                self.graphs[size] = graph
            torch.cuda.synchronize(dev)
        except Exception as exc:
            self._failed = True
            self.graphs.clear()
            self.outputs.clear()
            self.warn(f"CUDA-graph capture failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")

    def run_padded(self, size, args):
        if self._failed:
            return None
        if not self.graphs:
            self.capture()
            if self._failed:
                return None
        for buf, value in zip(self.buffers, args):
            buf[:size].copy_(value)  # a padded table is already [size, W]
        self.graphs[size].replay()
        return self.outputs[size]


def make_decode_graphs(runner, sizes, device: torch.device):
    """CUDA graphs on a CUDA device, torch.compile elsewhere."""
    return CUDAGraphDecode(runner, sizes) if device.type == "cuda" else CompiledDecode(runner, sizes)


__all__ = ["StaticDecode", "CompiledDecode", "CUDAGraphDecode", "make_decode_graphs", "graph_batch_sizes",
           "bucket", "DEFAULT_SIZES"]
