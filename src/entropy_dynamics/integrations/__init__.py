"""Plugins for the engines people already run: `trl` (TRL GRPOTrainer) and `verl` (policy losses)."""
