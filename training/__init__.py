"""recoffer offline trainer: load purchases, fit, evaluate, gate and publish a model."""
