"""entropy-dynamics: predict, measure and control policy entropy in RL fine-tuning of LMs."""

__version__ = "0.1.0"
