"""Training configuration: nested dataclasses validated on construction, YAML presets and
``key=value`` overrides. See docs/config.md for every field.

    from tempflow.config import load_config
    cfg = load_config("configs/shapes-tempflow.yaml", ["algorithm.num_branches=6"])
"""

from tempflow.config.loading import (apply_override, config_from_dict, config_to_dict, diff_configs,
                                     dump_config, load_config, parse_override, read_yaml)
from tempflow.config.schema import (AlgorithmConfig, BranchPointSpec, LoraConfig, ModelConfig,
                                    OptimConfig, PromptsConfig, RewardConfig, RunConfig,
                                    SamplingConfig, TrainConfig)

__all__ = ["AlgorithmConfig", "BranchPointSpec", "LoraConfig", "ModelConfig", "OptimConfig",
           "PromptsConfig", "RewardConfig", "RunConfig", "SamplingConfig", "TrainConfig",
           "apply_override", "config_from_dict", "config_to_dict", "diff_configs", "dump_config",
           "load_config", "parse_override", "read_yaml"]
