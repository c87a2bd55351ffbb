"""Figures: ``diagnose`` draws a pair's reward distributions and positions (``poweropd diagnose``), ``runs``
draws the curves of runs' metrics.jsonl (``poweropd plot``, the demo's figures)."""
