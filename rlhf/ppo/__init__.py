"""PPO stage: the only package that imports ``trl.experimental.ppo``. Kept light at import."""
