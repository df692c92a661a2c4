"""The default side-effect budget of a recommendation (``steerwatch sweep``, ``steerwatch report``,
:func:`steerwatch.evals.sweep.recommend`), in a module light enough for the CLI to import at start.

What the numbers rest on: docs/evals.md, "Default budgets" (measured with
``scripts/default_budgets.py`` on the embedded model and the 120 built-in neutral prompts)."""

DEFAULT_MAX_KL = 0.1  # nats/token, next-token KL vs. unsteered on neutral prompts
DEFAULT_MAX_CAPABILITY_DROP = 0.02  # capability accuracy (fraction) below the unsteered row's
# fewer neutral prompts than this and a KL budget decides on noise (the sweep says so before it runs)
MIN_BUDGET_PROMPTS = 30
