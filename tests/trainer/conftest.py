from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run trainer tests on one intra-op thread, restored afterwards.

    The test models are tiny, so a second thread buys nothing, and OpenMP threads
    that spin-wait for a core another process holds made the digits test 6× slower
    (45 s against 7 s) when other suites ran alongside on a 2-core machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
