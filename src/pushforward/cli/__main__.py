"""``python -m pushforward.cli``: the ``pushforward`` command."""

from . import main

main()
