import pytest
import torch
from tiny_models import make_tokenizer


@pytest.fixture
def tok():
    """The tiny byte-level BPE tokenizer with a ChatML template (tests/tiny_models.py)."""
    return make_tokenizer()


@pytest.fixture
def one_torch_thread():
    """Tiny models run on one thread: their ops are so small that thread hand-offs cost more than
    the arithmetic. A module opts in with pytestmark = pytest.mark.usefixtures("one_torch_thread")."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
