"""What a run leaves behind and how it survives: the run directory with its checkpoints and resume checks
(``rundir``), metric destinations (``trackers``), per-step metrics (``metrics``, their names in
``metric_names``), signals and non-finite steps (``faults``)."""
