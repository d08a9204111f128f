"""Quality benchmarks: evidence that the models learn (scripts/quality.py runs them).

mqar.py: the multi-query associative recall task, generated here (nothing downloaded).
quality.py: the architectures, their training loops (MQAR sweep, convergence on Python source).
report.py: JSON, PNGs and the markdown tables.
"""
