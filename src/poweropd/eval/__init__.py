"""Evaluation: the harness (``harness``: Avg@n, Pass@n, length), answer grading (``grading``, numbers in
``grading_numbers``), the seven benchmarks' data (``benchmarks``)."""
