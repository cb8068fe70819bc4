"""``python -m posenc.sweep --multirun OVERRIDES``: the sweep's child process.

The task function is run from its importable module (`posenc.sweep.job`), not from
``__main__``, so that the launchers pickle it by reference and their workers import it.
"""

from posenc.sweep.job import main

main()
