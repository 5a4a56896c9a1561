"""sentence_embeddings checks its input before touching the model."""
import pytest

from tutx.models import sentence_embeddings


@pytest.mark.parametrize("sentences, exc, match", [
    ("one sentence", TypeError, "a list of strings"),
    (["ok", 3], TypeError, "a list of strings"),
    ([], ValueError, "at least one sentence"),
])
def test_bad_sentences(sentences, exc, match):
    with pytest.raises(exc, match=f"sentences: expected {match}"):
        sentence_embeddings(None, None, sentences)
