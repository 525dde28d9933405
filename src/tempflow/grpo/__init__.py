"""GRPO math for flow models: group advantages, the clipped policy loss, the KL penalty."""

from tempflow.grpo.advantages import GroupAdvantages, group_advantages
from tempflow.grpo.losses import PolicyLoss, clipped_policy_loss, kl_penalty

__all__ = ["GroupAdvantages", "group_advantages", "PolicyLoss", "clipped_policy_loss", "kl_penalty"]
