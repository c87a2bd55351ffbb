"""benchmarks/vs_trl.py's parts: the shared setup (``common``), the contestants (``contestants``), the
loss-agreement check (``agreement``)."""
