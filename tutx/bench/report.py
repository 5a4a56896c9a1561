"""Reporting: results as Markdown tables that render in notebooks and the book, and the performance
report (:func:`performance_report`): hardware, versions and baseline first, then tables and figures."""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from tutx._validate import check_int, check_str


def _cell(value, digits: int) -> str:
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1e15 else f"{value:.{digits}e}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")  # a bare pipe would split the cell


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None, digits: int = 2) -> str:
    """Format ``rows`` (a list of dicts with the same keys) as a GitHub-style Markdown table.

    Numbers are right-aligned; floats are rounded to ``digits`` so tables are stable across runs.
    A ``|`` inside a cell (or a column name) is escaped, so it cannot split the cell.
    """
    if isinstance(rows, str) or not isinstance(rows, Sequence) or not all(isinstance(r, Mapping) for r in rows):
        raise TypeError(f"rows: expected a list of dicts, got {type(rows).__name__}")
    if not rows:
        raise ValueError("rows: expected at least one row, got an empty list")
    check_int("digits", digits, minimum=0)
    columns = list(columns) if columns is not None else list(rows[0])
    for i, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"rows[{i}]: missing column(s) {missing}")
    numeric = [all(isinstance(r[c], (int, float)) and not isinstance(r[c], bool) for r in rows) for c in columns]
    lines = ["| " + " | ".join(_cell(c, digits) for c in columns) + " |",
             "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(r[c], digits) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def show_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None, digits: int = 2):
    """Display ``rows`` as a rendered table in a notebook (plain Markdown text elsewhere)."""
    text = markdown_table(rows, columns, digits)
    try:
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover - IPython is always there in notebooks
        print(text)
        return
    display(Markdown(text))


# ---- the performance report ------------------------------------------------------------------

OFFLINE_KEYS = ("batch", "prompt_len", "prefill_ms", "decode_ms")  # rows of tutx.bench.benchmark_model
SERVING_KEYS = ("request_rate", "output_throughput", "ttft_ms")  # rows of tutx.bench.serving.sweep
_HEADER_KEYS = ("device", "threads", "python", "torch", "transformers", "triton", "tutx", "date", "command")


def _kind(rows: list) -> str:
    if all(all(k in r for k in OFFLINE_KEYS) for r in rows):
        return "offline"
    if all(all(k in r for k in SERVING_KEYS) for r in rows):
        return "serving"
    return "table"


def _flat(row: Mapping) -> dict:
    """A row with nested dicts (``ttft_ms: {median, p99}``) flattened to ``ttft_ms_median`` …; lists joined."""
    out = {}
    for key, value in row.items():
        if isinstance(value, Mapping):
            out.update({f"{key}_{k}": v for k, v in value.items() if not isinstance(v, (Mapping, list))})
        elif isinstance(value, (list, tuple)):
            out[key] = "–".join(_cell(v, 3) for v in value) if all(isinstance(v, (int, float)) for v in value) else str(value)
        elif value is None:
            out[key] = "–"
        else:
            out[key] = value
    return out


def _table(rows: list) -> str:
    flat = [_flat(r) for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    return markdown_table([{c: r.get(c, "–") for c in columns} for r in flat], columns, digits=2)


class Report:
    """A performance report: a header (hardware, versions, baseline), sections of tables, and figures.

    ``to_markdown()`` and ``to_html()`` render it (the HTML embeds the figures; the Markdown links
    them as ``figures/<name>.png``, which ``save`` writes next to it).
    """

    def __init__(self, title: str, environment: Mapping, baseline: str, sections: list, figures: dict):
        self.title, self.environment, self.baseline = title, dict(environment), baseline
        self.sections = sections  # [(heading, markdown text)]
        self.figures = figures  # {name: matplotlib Figure}
        self._pngs: dict = {}

    def png(self, name: str) -> bytes:
        """Figure ``name`` as PNG bytes (rendered once)."""
        if name not in self._pngs:
            import io

            buf = io.BytesIO()
            self.figures[name].savefig(buf, format="png", bbox_inches="tight")
            self._pngs[name] = buf.getvalue()
        return self._pngs[name]

    def _header(self) -> list[str]:
        env = self.environment
        lines = [f"- **{k}**: {env[k]}" for k in _HEADER_KEYS if k in env]
        lines += [f"- **{k}**: {v}" for k, v in env.items() if k not in _HEADER_KEYS and not isinstance(v, (dict, list))]
        return (lines or ["- environment not recorded"]) + [f"- **baseline**: {self.baseline}"]

    def to_markdown(self) -> str:
        parts = [f"# {self.title}", "", *self._header()]
        for heading, text in self.sections:
            parts += ["", f"## {heading}", "", text]
        if self.figures:
            parts += ["", "## Figures", ""] + [f"![{name}](figures/{name}.png)" for name in self.figures]
        return "\n".join(parts) + "\n"

    def to_html(self) -> str:
        import base64
        import html

        def inline(text: str) -> str:
            text = html.escape(text)
            text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
            return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

        out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
               "<style>body{font-family:sans-serif;max-width:70em;margin:auto}table{border-collapse:collapse}"
               "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>",
               f"<h1>{html.escape(self.title)}</h1><ul>"]
        out += [f"<li>{inline(line[2:])}</li>" for line in self._header()] + ["</ul>"]
        for heading, text in self.sections:
            out.append(f"<h2>{html.escape(heading)}</h2>")
            rows = [line for line in text.splitlines() if line.startswith("|")]
            other = [line for line in text.splitlines() if line and not line.startswith("|")]
            out += [f"<p>{inline(line)}</p>" for line in other]
            if rows:
                cells = [re.split(r"(?<!\\)\|", r.strip()[1:-1]) for r in rows]
                out.append("<table><tr>" + "".join(f"<th>{inline(c.strip())}</th>" for c in cells[0]) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{inline(c.strip().replace(chr(92) + '|', '|'))}</td>" for c in r) + "</tr>"
                        for r in cells[2:]]
                out.append("</table>")
        for name in self.figures:
            out.append(f"<h3>{html.escape(name)}</h3><img alt='{name}' src='data:image/png;base64,"
                       f"{base64.b64encode(self.png(name)).decode()}'>")
        return "\n".join(out + ["</body></html>"])

    def save(self, out_dir) -> Path:
        """Write ``report.md``, ``report.html`` and ``figures/*.png`` into ``out_dir``; returns ``out_dir``."""
        out = Path(out_dir)
        (out / "figures").mkdir(parents=True, exist_ok=True)
        for name in self.figures:
            (out / "figures" / f"{name}.png").write_bytes(self.png(name))
        (out / "report.md").write_text(self.to_markdown())
        (out / "report.html").write_text(self.to_html())
        return out

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def __repr__(self) -> str:
        return f"Report({self.title!r}, sections={[h for h, _ in self.sections]}, figures={list(self.figures)})"


def _load(results) -> list[dict]:
    if isinstance(results, (str, Path)):
        path = Path(results)
        if not path.is_file():
            raise FileNotFoundError(f"results: no such file {str(path)!r}")
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"results: {str(path)!r} is not JSON ({err})") from None
    if isinstance(results, Mapping):
        return [dict(results)]
    if isinstance(results, Sequence) and results and all(isinstance(r, Mapping) for r in results):
        return [dict(r) for r in results]
    raise TypeError(f"results: expected a results dict (with 'environment'), a list of them or a path to a JSON file, "
                    f"got {type(results).__name__}")


def performance_report(results, title: str = "Performance report", baseline: str | None = None) -> Report:
    """A :class:`Report` of one results file (a path, or its dict) or several (a list: the first one's
    environment heads the report).

    Every area (a key holding a list of row dicts; ``{"rows": [...]}`` too) becomes a table. Offline
    rows (:func:`tutx.bench.benchmark_model`) also draw latency and throughput against batch size and
    memory against sequence length; serving rows (``tutx.bench.serving.sweep``) the latency–throughput
    curve. ``baseline`` names what the numbers compare against (default: the results' own
    ``"baseline"`` entry, or the first offline row).
    """
    from tutx.bench import report_figures as figs

    check_str("title", title)
    docs = _load(results)
    environment = next((d["environment"] for d in docs if isinstance(d.get("environment"), Mapping)), {})
    sections, figures = [], {}
    for doc in docs:
        for area, rows in doc.items():
            if isinstance(rows, Mapping) and isinstance(rows.get("rows"), list):
                rows = rows["rows"]
            if area == "environment" or not isinstance(rows, list) or not rows or not all(isinstance(r, Mapping) for r in rows):
                continue
            kind = _kind(rows)
            sections.append((area, _table(rows)))
            if kind == "offline":
                baseline = baseline or doc.get("baseline") or (
                    f"batch {rows[0]['batch']}, prompt {rows[0]['prompt_len']} tokens (first row of {area!r})")
                for name, fn in (("latency_vs_batch", figs.latency_vs_batch), ("throughput_vs_batch", figs.throughput_vs_batch),
                                 ("memory_vs_seq_len", figs.memory_vs_seq_len)):
                    fig = fn(rows)
                    if fig is not None:
                        figures[f"{area}_{name}"] = fig
            elif kind == "serving":
                baseline = baseline or doc.get("baseline") or f"lowest request rate of {area!r}"
                fig = figs.latency_throughput(rows)
                if fig is not None:
                    figures[f"{area}_latency_throughput"] = fig
    if not sections:
        raise ValueError("results: no area with rows (a key holding a non-empty list of dicts) to report")
    return Report(title, environment, baseline or "not named", sections, figures)
