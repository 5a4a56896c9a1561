"""The measured optimisation table: every number comes from a measured row, none is typed in."""
import ast
import re
from pathlib import Path

import pytest
import torch

from _tiny_llama import tiny_llama
from tutx.bench.technique_table import display_rows, explain, gpu_rows, measure_techniques
from tutx.bench.techniques import Technique, default_techniques, set_kv_heads_

ROOT = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _row(name="INT8 weight-only", kind="quant", **kw):
    row = {"technique": name, "kind": kind, "reference": "baseline", "batch": 1, "prompt_len": 128, "gen_len": 16,
           "rounds": 5, "weights_mb": 7.18, "kv_cache_mb": 0.35, "memory_reduction": 2.2371,
           "prefill_ms": 130.4, "prefill_speedup": 0.9271, "prefill_speedup_ci": [0.8463, 1.0345],
           "decode_ms": 37.4, "decode_speedup": 0.7492, "decode_speedup_ci": [0.744, 0.8529],
           "ppl": 62.79, "ppl_change": -0.0071, "ppl_noise": 0.0063, "claimed": "INT8: 2–3× faster, <1% quality",
           "published": "gpt-fast: 1.48× decode tok/s", "cite": "gptfast2023"}
    row.update(kw)
    row["why"] = explain(row)
    return row


def test_every_number_in_the_table_traces_to_its_row():
    rows = [_row("baseline", "baseline"), _row(), _row("30% of heads pruned", "prune", decode_speedup=1.31)]
    table = display_rows(rows)
    assert [t["technique"] for t in table] == ["INT8 weight-only", "30% of heads pruned"]  # baseline is the reference
    for shown, row in zip(table, rows[1:]):
        produced = {f"{v:.2f}" for v in _numbers(row)} | {f"{v:+.2f}" for v in _numbers(row)}
        for column, cell in shown.items():
            if column in ("claimed (outline)", "published"):
                assert cell == row[{"claimed (outline)": "claimed", "published": "published"}[column]]
                continue
            if column in ("technique", "measured against"):
                continue
            for token in NUMBER.findall(cell):
                assert token in produced, f"{column}={cell!r}: {token} is not formatted from the row"
    assert table[0]["decode"] == "0.75× [0.74, 0.85]" and table[0]["perplexity change"] == "-0.01 ± 0.01"


def _numbers(row):
    for v in row.values():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            yield v
        elif isinstance(v, list):
            yield from v


def test_the_notebook_table_cells_hold_no_typed_numbers():
    src = (ROOT / "notebooks" / "src" / "08_performance_benchmarking.py").read_text()
    cells = [c for c in src.split("# %%") if "display_rows(" in c and not c.startswith(" [markdown]")]
    assert cells, "the notebook no longer prints the optimisation table with display_rows"
    for cell in cells:
        tree = ast.parse("\n".join(line for line in cell.splitlines() if not line.startswith("%")))
        typed = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                 and isinstance(n.value, (int, float)) and not isinstance(n.value, bool) and n.value not in (0, 1)]
        assert not typed, f"numbers typed into the table cell: {typed}"
        assert 'latest("bench_techniques")' in cell or "measured" in cell


def test_the_recorded_table_was_produced_by_the_script():
    from tutx.bench import latest

    measured = latest("bench_techniques")
    if measured is None:
        pytest.skip("no bench_techniques results file yet (run scripts/bench_techniques.py)")
    assert measured.environment["command"].startswith("scripts/bench_techniques.py")
    names = [r["technique"] for r in measured.rows]
    assert names[0] == "baseline" and set(names[1:]) == {t.name for t in default_techniques()}
    for row in measured.rows[1:]:
        assert f"{row['decode_speedup']:.2f}×" in explain(row)  # the sentence follows from the measured numbers
    assert len(display_rows(measured.rows)) == len(measured.rows) - 1


def test_explanations_depend_on_the_measured_ratio():
    slow, fast = _row(decode_speedup=0.75), _row(decode_speedup=1.6, decode_speedup_ci=[1.4, 1.8])
    assert "0.75×" in slow["why"] and "dequantize" in slow["why"]
    assert "1.60×" in fast["why"] and "faster" in fast["why"]
    assert "uptraining" in _row(kind="kv_heads", ppl_change=60.0, ppl_noise=2.0)["why"]
    assert "uptraining" not in _row(kind="kv_heads", ppl_change=0.0, ppl_noise=0.0)["why"]
    for kind in ("prune", "attention", "kv_heads", "combo"):
        assert "×" in _row(kind=kind)["why"]


def test_gpu_rows_come_from_results_files():
    for row in gpu_rows():
        assert row["device"] and row["file"].endswith(".json") and row["speed-up (median over shapes)"].endswith("×")


def test_set_kv_heads_mha_is_exact_and_mqa_shrinks_the_cache():
    model = tiny_llama(heads=4, kv_heads=2)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
        mha = set_kv_heads_(__import__("copy").deepcopy(model), 4)
        torch.testing.assert_close(mha(ids).logits, ref, rtol=1e-5, atol=1e-5)
        mqa = set_kv_heads_(__import__("copy").deepcopy(model), 1)
        out = mqa(ids, use_cache=True)
    from tutx.models.kv import kv_cache_nbytes

    assert mqa.config.num_key_value_heads == 1
    assert kv_cache_nbytes(out) == 2 * 2 * 1 * 8 * 4 * 2 * 7  # K,V x layers x 1 head x dim x fp32 x batch x len


def test_measure_techniques_end_to_end_on_a_small_model():
    from tutx.models import heldout_text, load_tiny_tokenizer

    tok = load_tiny_tokenizer()
    model = tiny_llama(vocab=len(tok), layers=1)
    techniques = [t for t in default_techniques(kv_heads=2, heads=4) if t.name.startswith(("INT8", "GQA"))]
    rows = measure_techniques(model, tok, techniques, rounds=1, prompt_len=8, gen_len=3,
                              text=heldout_text()[:2000], progress=False)
    assert [r["technique"] for r in rows] == ["baseline", "INT8 weight-only", "GQA (2 KV heads) vs MHA (4)"]
    int8, gqa = rows[1], rows[2]
    assert int8["memory_reduction"] > 1 and int8["weights_mb"] < rows[0]["weights_mb"]  # embeddings stay fp32
    assert abs(int8["ppl_change"]) < 5 * int8["ppl_noise"] + 0.5
    assert gqa["reference"] == "MHA (4 KV heads)" and gqa["ppl_change"] == pytest.approx(0, abs=1e-3)
    assert gqa["memory_reduction"] > 1  # the MHA reference keeps 4x the cache
    for r in rows:
        assert r["prefill_speedup_ci"][0] <= r["prefill_speedup"] <= r["prefill_speedup_ci"][1]
    with pytest.raises(ValueError, match="techniques"):
        measure_techniques(model, tok, [], progress=False)
    with pytest.raises(ValueError, match="rounds"):
        measure_techniques(model, tok, techniques, rounds=0, progress=False)


def test_technique_is_a_frozen_spec():
    t = Technique("x", lambda m, c: m, "quant")
    with pytest.raises(Exception):
        t.name = "y"


def test_distill_row_comes_from_the_chapter_2_file():
    from tutx.bench.technique_table import distill_rows

    for row in distill_rows():
        assert row["file"].startswith("compress") and float(row["memory"].split("×")[0]) > 1
