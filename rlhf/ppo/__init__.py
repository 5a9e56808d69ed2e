"""PPO stage: the only package that imports ``trl.experimental.ppo``. Kept light at import."""


def available() -> bool:
    """Whether TRL's PPO can be imported here (TRL 1.13 and later removed it; the project pins 1.12.0)."""
    try:
        import trl.experimental.ppo  # noqa: F401
    except Exception:  # ImportError when removed; anything a broken install raises on import
        return False
    return True
