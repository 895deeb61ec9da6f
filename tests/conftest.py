import os

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--device", default=os.environ.get("PUSHFORWARD_TEST_DEVICE", "cpu"),
                     help="device for the transform contract tests (cpu, cuda, mps)")


@pytest.fixture
def device(request):
    return torch.device(request.config.getoption("--device"))


# Tiny tensors: threads cost more than they give, and pytest-xdist runs a process per core.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
