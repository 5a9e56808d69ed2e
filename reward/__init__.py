"""Preference data -> reward model (TRL RewardTrainer, pairwise or K-wise), and its evaluation.

Light package: importing it loads no torch, trl or deepspeed. Never imports ``feedback_app``.
"""
