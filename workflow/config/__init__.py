"""Config: YAML < env file < process env < flags, validated by a JSON Schema (SPEC §2)."""

from workflow.config.loader import load_config
from workflow.config.model import SECRET_ENV_NAMES, Config

__all__ = ["Config", "SECRET_ENV_NAMES", "load_config"]
