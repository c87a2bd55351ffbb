"""Offline model aliases registered into ``models.ALIASES`` (see issue 3: ``smollm2-135m-instruct``)."""
