"""The ``xpconv bench`` benchmark: suite, runners, timing, reports.

``xpconv bench --help`` (or ``python benchmarks/run.py``) runs it; :mod:`.cli`
registers the subcommand, :mod:`.suite` defines the layers, :mod:`.driver`
times them with :mod:`.runners` (through each backend's clock and memory probe), and :mod:`.report` writes
the markdown table, JSON and plots.
"""
