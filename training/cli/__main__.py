"""``python -m training.cli``: the ``recoffer`` command."""

from training.cli import main

main()
