"""Command-line entry points (``linattn-train``, ``linattn-generate``) and their parts.

``train.py`` runs the steps of a training run; the parts are in ``args.py`` (parser, checks), ``model.py``
(config, model), ``data.py`` (documents, packed blocks), ``rundir.py`` (output-dir rules, lock, checkpoint
markers), ``trainer.py`` (TrainingArguments, Trainer subclass, callbacks) and ``report.py`` (results.json,
loss curve, sample).

The thin ``scripts/*.py`` wrappers and the console commands installed by setup.py both call ``main()``
of the modules here.
"""


class UsageError(ValueError):
    """Bad command-line input: the message (one line) names the argument and what was expected. The
    commands print it as ``<prog>: error: <message>`` and exit with status 2, as argparse does."""
