"""The default side-effect budget of a recommendation (``steerwatch sweep``, ``steerwatch report``,
:func:`steerwatch.evals.sweep.recommend`), in a module light enough for the CLI to import at start.

What the numbers rest on: docs/evals.md, "Default budgets" (measured with
``scripts/default_budgets.py`` on the embedded model and the 120 built-in neutral prompts)."""

# nats/token, next-token KL vs. unsteered on neutral prompts. On the embedded model (120 built-in
# neutral prompts): honesty +0.02 (the dose the README and the serving guard accept) 0.133 [0.129,
# 0.138]; +0.03 (refused by the guard) 0.255 [0.249, 0.262]; so the sweep's budget and the guard draw
# the line between the same two doses. An honest one-sentence system prompt moves the first answer
# token's distribution more than either (0.394 vs. 0.176 and 0.361 nats).
DEFAULT_MAX_KL = 0.15
# capability accuracy (fraction) below the unsteered row's. Not finer than the built-in capability set
# can resolve: on its 200 items honesty +0.02 cost 0.035 (14 lost, 7 gained), paired 95 % interval
# -0.010 to +0.080, so a 0.02 budget refused the README's dose on a difference indistinguishable from 0.
DEFAULT_MAX_CAPABILITY_DROP = 0.05
# fewer neutral prompts than this and the sweep cautions before it runs: the mean of 4 prompts fell
# anywhere in 0.118-0.155 (90 % of random 4-prompt subsets) around honesty +0.02's 0.133
MIN_BUDGET_PROMPTS = 30
