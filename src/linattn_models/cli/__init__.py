"""Command-line entry points (``linattn-train``, ``linattn-generate``) and their data helpers.

The thin ``scripts/*.py`` wrappers and the console commands installed by setup.py both call ``main()``
of the modules here.
"""
