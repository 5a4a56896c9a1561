"""scripts/run_notebook_sources.py: the Jupyter-less notebook runner of the GPU check."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("run_notebook_sources", ROOT / "scripts" / "run_notebook_sources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCE = '''# %% [markdown]
# # A chapter
# %%
import sys
if "google.colab" in sys.modules:
    %pip install -q tutx
x = 2
# %% [markdown]
# x = 3 here is prose, not code
# %%
import asyncio
async def double(v):
    await asyncio.sleep(0)
    return 2 * v
y = await double(x)
assert y == 4, y
# %% [solution]
z = y + 1
'''


def test_code_cells_skip_magics_and_markdown(tmp_path):
    src = tmp_path / "chapter.py"
    src.write_text(SOURCE)
    cells = _load().code_cells(src)
    assert len(cells) == 3
    assert "pass  # magic skipped: %pip install -q tutx" in cells[0]
    assert "prose" not in "".join(cells)


def _run(tmp_path, text):
    src = tmp_path / "chapter.py"
    src.write_text(text)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebook_sources.py"), "--one", str(src)],
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def test_a_chapter_with_top_level_await_passes(tmp_path):
    res = _run(tmp_path, SOURCE)
    assert res["status"] == "passed" and res["cells"] == 3, res


def test_a_failing_assert_names_its_cell(tmp_path):
    res = _run(tmp_path, SOURCE.replace("assert y == 4", "assert y == 5"))
    assert res["status"] == "failed" and res["cell"] == 2 and "AssertionError" in res["error"], res
