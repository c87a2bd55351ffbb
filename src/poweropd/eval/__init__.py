"""Evaluation: the harness (``harness``: Avg@n, Pass@n, length), answer grading (``grading``, numbers in
``grading_numbers``), the seven benchmarks' data (``benchmarks``), and the held-out distance to the teacher
(``distance``: what OPD optimises, for models that solve too little for accuracy to move)."""
