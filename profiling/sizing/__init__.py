"""Sizing: exact encoder and KV budgets offline (``budget``), on the live engine
(``live_budget``), and measured dummy profiles (``dummy``)."""
