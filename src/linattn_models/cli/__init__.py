"""Command-line entry points (``linattn-train``, ``linattn-generate``) and their data helpers.

The thin ``scripts/*.py`` wrappers and the console commands installed by setup.py both call ``main()``
of the modules here.
"""


class UsageError(ValueError):
    """Bad command-line input: the message (one line) names the argument and what was expected. The
    commands print it as ``<prog>: error: <message>`` and exit with status 2, as argparse does."""
