"""The paged KV cache's bookkeeping: which pool block holds which sequence's tokens.

The K/V pool is cut into ``num_blocks`` blocks of ``block_size`` token slots (vLLM's
PagedAttention). A sequence owns a *block table*, a list of block ids; position ``p`` lives in
slot ``block_table[p // block_size] * block_size + p % block_size``. Blocks come from a free list
and go back to it when the sequence ends, so memory is reserved a block at a time instead of
``max_model_len`` slots per request up front.

Prefix caching: a *full* block is identified by a hash of its tokens chained with the hash of the
block before it (so equal hashes mean equal whole prefixes). When a new prompt starts with blocks
already in the pool, it shares them (reference counts) and its prefill skips those tokens. A freed
block keeps its hash and content until it is handed out again, so a finished or preempted
request's prefix can still be reused. The block that holds a prompt's last token is never shared,
so every prefill computes at least one token (whose logits give the next token).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from tutx.engine.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None  # chained hash of the prefix up to the end of this block (full blocks only)
    token_ids: tuple[int, ...] = field(default=())

    def reset(self) -> None:
        self.ref_count, self.hash, self.token_ids = 1, None, ()


def chain_hash(prev_hash: int | None, token_ids) -> int:
    """Hash of a full block's tokens, chained with the hash of the prefix before it."""
    return hash((prev_hash, tuple(token_ids)))


class BlockManager:
    """Free list, per-sequence block tables, reference counts and the prefix-cache hash table."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        # Trusted sizes: EngineConfig checked them (CONTRIBUTING.md, "Errors").
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_block_ids: deque[int] = deque(range(num_blocks))
        self.hash_to_block: dict[int, int] = {}
        self._unregistered: dict[int, list] = {}  # seq_id -> hashes of its blocks not computed yet

    def __repr__(self) -> str:
        return (f"BlockManager(num_blocks={self.num_blocks}, block_size={self.block_size}, "
                f"free={self.num_free_blocks}, prefix_caching={self.enable_prefix_caching}, "
                f"cached_hashes={len(self.hash_to_block)})")

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix, as after a restart; only when no block is in use (else False).

        Benchmarks call it between runs, so that a repeated workload pays for its prompts again.
        """
        if self.num_free_blocks != self.num_blocks:
            return False
        for block in self.blocks:
            block.hash, block.token_ids = None, ()
        self.hash_to_block.clear()
        return True

    # -- internals ---------------------------------------------------------------------------
    def _take_free_block(self) -> int:
        """Pop the least recently freed block; it forgets its old content (and hash entry)."""
        block = self.blocks[self.free_block_ids.popleft()]
        if block.hash is not None and self.hash_to_block.get(block.hash) == block.block_id:
            del self.hash_to_block[block.hash]
        block.reset()
        return block.block_id

    def _register(self, block_id: int, h: int, token_ids) -> None:
        block = self.blocks[block_id]
        block.hash, block.token_ids = h, tuple(token_ids)
        self.hash_to_block[h] = block_id

    def _lookup(self, h: int, token_ids) -> int | None:
        """A pool block holding exactly this prefix, or None (token ids are compared: no false hits)."""
        block_id = self.hash_to_block.get(h)
        if block_id is None:
            return None
        block = self.blocks[block_id]
        return block_id if block.hash == h and block.token_ids == tuple(token_ids) else None

    def _prefix(self, seq: Sequence) -> tuple[list[int | None], list[int]]:
        """``(hashes, hits)``: the chained hash of each block of ``seq`` (None for a partial block, or
        with caching off) and the pool blocks holding its leading blocks already (its prefix-cache hits).

        The block with the prompt's last token is never a hit (a prefill computes >= 1 token), nor is
        any block of a sequence that needs logits at every prompt position.
        """
        bs, h, hashes, hits = self.block_size, None, [], []
        lookup = self.enable_prefix_caching and not seq.wants_prompt_logits
        for i in range(seq.num_blocks(bs)):
            tokens = seq.block_tokens(i, bs)
            h = chain_hash(h, tokens) if (len(tokens) == bs and self.enable_prefix_caching) else None
            hashes.append(h)
            if lookup and h is not None and len(hits) == i and (i + 1) * bs < len(seq):
                hit = self._lookup(h, tokens)
                if hit is not None:
                    hits.append(hit)
        return hashes, hits

    # -- the API the scheduler uses ----------------------------------------------------------
    def can_allocate(self, seq: Sequence) -> bool:
        """Enough free blocks for ``seq``'s tokens, counting the blocks it would share.

        A prefix-cache hit on a block that another sequence holds costs no free block; a hit on a
        freed-but-cached block takes that block back off the free list, so it still counts.
        """
        _, hits = self._prefix(seq)
        shared = sum(self.blocks[b].ref_count > 0 for b in hits)
        return self.num_free_blocks >= seq.num_blocks(self.block_size) - shared

    def allocate(self, seq: Sequence, num_new_tokens: int | None = None) -> None:
        """Give ``seq`` a block table for all its tokens, sharing cached prefix blocks.

        Sets ``seq.num_cached_tokens`` (and ``num_computed_tokens``) to the number of leading tokens
        whose K/V is already in the pool. Newly allocated full blocks are registered at once when
        the next forward pass writes their K/V (before any later prefill can read them): all of
        them, or, when only ``num_new_tokens`` tokens are computed next (a chunked prefill), those
        within them; :meth:`computed` registers the others as their chunks are computed.
        """
        if seq.block_table:
            raise ValueError(f"seq: {seq.request_id!r} already holds blocks {seq.block_table}")
        if not self.can_allocate(seq):
            raise RuntimeError(f"allocate: {seq.num_blocks(self.block_size)} blocks needed for "
                               f"{seq.request_id!r}, only {self.num_free_blocks} free; call can_allocate first")
        hashes, hits = self._prefix(seq)
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:  # cached but free: take it back off the free list
                self.free_block_ids.remove(block_id)
            block.ref_count += 1
            seq.block_table.append(block_id)
        seq.num_cached_tokens = seq.num_computed_tokens = len(hits) * self.block_size
        for i in range(len(hits), len(hashes)):
            seq.block_table.append(self._take_free_block())
        self._unregistered[seq.seq_id] = [None] * len(hits) + hashes[len(hits):]
        self.computed(seq, len(seq) if num_new_tokens is None else seq.num_cached_tokens + num_new_tokens)

    def computed(self, seq: Sequence, num_tokens: int) -> None:
        """A chunked prefill of ``seq`` will have written the K/V of its first ``num_tokens`` tokens
        by the end of this step: register the full blocks among them (prefix-cache hits from now on)."""
        hashes = self._unregistered.get(seq.seq_id)
        if hashes is None:
            return
        for i in range(min(num_tokens // self.block_size, len(hashes))):
            if hashes[i] is not None:
                self._register(seq.block_table[i], hashes[i], seq.block_tokens(i, self.block_size))
                hashes[i] = None
        if num_tokens >= len(seq):
            del self._unregistered[seq.seq_id]

    def can_append(self, seq: Sequence) -> bool:
        """Whether the slot for ``seq``'s last token can be had (a new block only at a block boundary)."""
        return self.num_free_blocks >= seq.num_blocks(self.block_size) - len(seq.block_table)

    def append_slot(self, seq: Sequence) -> None:
        """Make room for ``seq``'s newest token; register its block's hash once that block is full."""
        if not seq.block_table:
            raise ValueError(f"seq: {seq.request_id!r} holds no blocks; allocate it first")
        missing = seq.num_blocks(self.block_size) - len(seq.block_table)
        if missing > 1 or missing < 0:
            raise ValueError(f"seq: {seq.request_id!r} has {len(seq)} tokens for {len(seq.block_table)} "
                             f"blocks of {self.block_size}; append_slot adds one token at a time")
        if missing and not self.num_free_blocks:
            raise RuntimeError("append_slot: no free block; call can_append first")
        if missing:
            seq.block_table.append(self._take_free_block())
        if self.enable_prefix_caching and len(seq) % self.block_size == 0:
            prev = self.blocks[seq.block_table[-2]].hash if len(seq.block_table) > 1 else None
            if prev is not None or len(seq.block_table) == 1:
                tokens = seq.block_tokens(len(seq.block_table) - 1, self.block_size)
                self._register(seq.block_table[-1], chain_hash(prev, tokens), tokens)

    def free(self, seq: Sequence) -> None:
        """Drop ``seq``'s references; blocks nobody uses go back to the free list (content kept).

        Freed in reverse, so a prefix's first blocks are the last to be handed out again.
        """
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_block_ids.append(block_id)
        seq.block_table = []  # seq.num_cached_tokens stays: it describes the last admission
        self._unregistered.pop(seq.seq_id, None)


__all__ = ["BlockManager", "Block", "chain_hash"]
