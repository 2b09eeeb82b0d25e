import pytest

from tiny_models import make_tokenizer


@pytest.fixture
def tok():
    """The tiny byte-level BPE tokenizer with a ChatML template (tests/tiny_models.py)."""
    return make_tokenizer()
