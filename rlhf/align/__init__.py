"""GRPO, RLOO, DPO and SFT: thin commands over TRL 1.12's stable trainers, sharing PPO's models, precision,
resume, launch and export. Kept light at import (TRL and torch are imported when a run starts)."""

ALGORITHMS = ("grpo", "rloo", "dpo")
