"""``python -m client.cli``: the same as the ``parallax`` console script."""

from client.cli import run_main

run_main()
