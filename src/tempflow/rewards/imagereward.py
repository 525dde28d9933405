"""ImageReward on transformers' BLIP classes, with a converter for the published checkpoint."""
