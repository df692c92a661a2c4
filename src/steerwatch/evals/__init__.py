"""Evaluations that return tidy rows. The full harness (side effects, sweeps, reports) builds on these."""
