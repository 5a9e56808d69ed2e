"""RLHF preference training: rankings -> reward model -> PPO -> aligned checkpoint.

This package stays light: importing it (or ``rlhf.schema``, ``rlhf.config``) never imports torch,
trl, deepspeed or gradio. Heavy libraries are imported inside the functions that use them.
"""

__version__ = "0.1.0"
