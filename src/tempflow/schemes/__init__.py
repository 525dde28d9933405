"""Rollout schemes: how a GRPO iteration samples, groups and trains (one file per scheme).

    from tempflow.schemes import build_scheme
    scheme = build_scheme(cfg, sigmas)     # cfg.algorithm.scheme picks the class

See :mod:`tempflow.schemes.base` for the interface.
"""

from __future__ import annotations

from tempflow.schemes.base import RolloutScheme, step_weight_table
from tempflow.schemes.branching import BranchingScheme
from tempflow.schemes.flow_grpo import FlowGRPOScheme
from tempflow.schemes.sde_window import SDEWindowScheme
from tempflow.schemes.single_step import SingleStepScheme

SCHEMES: dict[str, type[RolloutScheme]] = {
    cls.name: cls for cls in (FlowGRPOScheme, BranchingScheme, SingleStepScheme, SDEWindowScheme)}


def build_scheme(cfg, sigmas) -> RolloutScheme:
    """The scheme of ``cfg.algorithm.scheme`` for schedule ``sigmas`` [T + 1] (model device)."""
    name = cfg.algorithm.scheme
    if name not in SCHEMES:
        raise ValueError(f"unknown rollout scheme {name!r}; known: {', '.join(SCHEMES)}")
    return SCHEMES[name](cfg, sigmas)


def describe_algorithm(algorithm: dict) -> str:
    """A human name for a run's algorithm section (a config dict, old or new field names):
    TempFlow-GRPO, Flow-GRPO, the two single-ingredient ablations, or '<scheme>, <weight> weights'."""
    scheme = algorithm.get("scheme") or ("branching" if algorithm.get("branching") else "flow_grpo")
    weight = algorithm.get("step_weight") or ("tempflow" if algorithm.get("weighting") else "none")
    names = {("branching", "tempflow"): "TempFlow-GRPO", ("flow_grpo", "none"): "Flow-GRPO",
             ("branching", "none"): "branching only", ("flow_grpo", "tempflow"): "weighting only"}
    return names.get((scheme, weight), f"{scheme}, {weight} weights")


__all__ = ["RolloutScheme", "SCHEMES", "build_scheme", "describe_algorithm", "step_weight_table",
           "BranchingScheme", "FlowGRPOScheme", "SDEWindowScheme", "SingleStepScheme"]
