"""The demo: the paper's comparison on an embedded task, offline (``experiment``: methods × seeds, trained and
evaluated; ``report``: verdicts with errors and figures; ``tasks``: the task, its tokenizer and shipped models)."""
