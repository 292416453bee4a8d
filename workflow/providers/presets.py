"""Offer presets from seed 004's GPU selection table, and the config -> ``OfferSpec`` step.

| preset          | seed 004 query                                  |
|-----------------|-------------------------------------------------|
| ``api-only``      | ``reliability>0.95 num_gpus=1``  (CPU ok)          |
| ``inference-24g`` | ``gpu_ram>=24 reliability>0.95 num_gpus=1``        |
| ``finetune-40g``  | ``gpu_ram>=40 reliability>0.95 num_gpus>=2``       |

All sorted by price (``-o 'dph+'``). Keys the user set in ``pod.offer`` win over the
preset's; keys left at their default take the preset's value.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

from workflow.errors import ConfigError
from workflow.providers.base import OfferSpec

PRESETS: Dict[str, Dict[str, Any]] = {
    "api-only": {"num_gpus": 1, "min_reliability": 0.95},
    "inference-24g": {"num_gpus": 1, "min_gpu_ram_gb": 24, "min_reliability": 0.95},
    "finetune-40g": {"num_gpus": 2, "num_gpus_exact": False, "min_gpu_ram_gb": 40, "min_reliability": 0.95},
}

_KEYS = ("gpu", "num_gpus", "min_gpu_ram_gb", "min_reliability", "max_price_per_hour", "regions")


def _user_set(config, key: str, offer: Mapping[str, Any]) -> bool:
    """Whether ``pod.offer.<key>`` came from the user rather than the built-in default."""
    source = (config.sources or {}).get(f"pod.offer.{key}")
    if source:
        return source != "default"
    from workflow.config.defaults import DEFAULTS

    return offer.get(key) != DEFAULTS["pod"]["offer"].get(key)


def offer_spec(config) -> OfferSpec:
    """The offer search the config asks for (``pod.offer.*``, optionally a preset)."""
    offer = dict(config.get("pod.offer", {}) or {})
    values: Dict[str, Any] = {k: offer.get(k) for k in _KEYS}
    preset = offer.get("preset")
    exact = True
    if preset:
        if preset not in PRESETS:
            import difflib

            close = difflib.get_close_matches(str(preset), PRESETS, n=1)
            raise ConfigError(f"pod.offer.preset: unknown preset {preset!r}; presets: {', '.join(PRESETS)}",
                              hint=f"did you mean '{close[0]}'?" if close else None)
        for key, value in PRESETS[preset].items():
            if key == "num_gpus_exact":
                if not _user_set(config, "num_gpus", offer):
                    exact = value
                continue
            if not _user_set(config, key, offer):
                values[key] = value
    regions = values.get("regions") or ()
    if isinstance(regions, str):
        regions = [r.strip() for r in regions.split(",") if r.strip()]
    return OfferSpec(
        gpu=values.get("gpu") or None,
        num_gpus=int(values["num_gpus"]) if values.get("num_gpus") is not None else None,
        num_gpus_exact=exact,
        min_gpu_ram_gb=_num(values.get("min_gpu_ram_gb")),
        min_reliability=_num(values.get("min_reliability")),
        max_price_per_hour=_num(values.get("max_price_per_hour")),
        regions=tuple(regions),
        preset=preset or None,
    )


def _num(value):
    return None if value is None else float(value)
