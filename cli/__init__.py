"""The ``coinvision`` command line: one sub-command module per package, on top of all of them."""
