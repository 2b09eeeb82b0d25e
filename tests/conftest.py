import sys
from pathlib import Path

import pytest
import torch
from tiny_models import make_tokenizer

# Test modules share helpers across folders (a judge server, tiny chat models): every test folder is importable.
TESTS = Path(__file__).resolve().parent
sys.path[1:1] = [str(folder) for folder in sorted(TESTS.iterdir()) if folder.is_dir() and folder.name != "fixtures"]


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
