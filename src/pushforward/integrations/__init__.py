r"""Adapters to the tools flow users already work in, each an optional extra:

- :mod:`pushforward.integrations.sbi`: any conditional flow as an sbi density estimator
  (``pip install -e ".[sbi]"``);
- :mod:`pushforward.integrations.pyro`: any flow as a Pyro distribution (``pip install -e ".[pyro]"``).

The submodules load on first access (``pf.integrations.sbi``), so that importing pushforward
never imports sbi or Pyro.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]  # sbi and pyro load on access: a star import must not need either


def require(package: str, extra: str) -> ModuleType:
    """``package`` imported, or a one-line error naming the extra that installs it.

    Raises:
        ImportError: "... needs PACKAGE: pip install -e ".[EXTRA]"" when it is not installed.
    """
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ImportError(f"pushforward.integrations.{extra} needs {package}, which is not installed: "
                          f'pip install -e ".[{extra}]"') from None


def __getattr__(name: str) -> ModuleType:
    if name in ("sbi", "pyro"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
