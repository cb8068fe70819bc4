"""An example posenc plugin: one encoding (``logbias``) and one task (``rotate_left``).

Nothing here is registered by hand: posenc finds both classes through the entry points in
this package's ``pyproject.toml``. See docs/extending.md in the posenc repository.
"""
