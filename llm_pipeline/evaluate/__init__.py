"""Held-out evaluation of a trained model (the `eval_metrics` stage)."""
