"""tempflow: reward alignment of flow-matching text-to-image models.

TempFlow-GRPO (trajectory branching + noise-aware weighting) and Flow-GRPO in one code path.
Conventions everywhere: sigma = 1 is pure noise, sigma = 0 is data,
x_sigma = (1 - sigma) x0 + sigma eps, velocity v = eps - x0, step math in float32.
"""

__version__ = "0.1.0"
