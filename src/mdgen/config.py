"""How stage scripts receive their configuration.

Rules pass the sections a stage needs as one JSON string (`--config '{"data": …, "vae": …}'`);
people running a stage by hand may pass a YAML file instead (`--config config/config.yaml`).
Either way the config is checked against the workflow's schema, which fills in every default.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml
from snakemake.utils import validate

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def deep_update(base: dict, changes: dict) -> dict:
    """A copy of `base` with nested `changes` applied, as Snakemake merges --configfile files and --config."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = deep_update(merged[key], value) if nested else copy.deepcopy(value)
    return merged


def load_config(text_or_path: str, *sections: str) -> dict:
    """Parse `--config` (JSON/YAML text or a YAML file) and check the required sections are there."""
    text = Path(text_or_path).read_text() if _is_file(text_or_path) else text_or_path
    try:
        config = json.loads(text)  # first: YAML 1.1 would read JSON's 1e-06 as a string
    except json.JSONDecodeError:
        config = yaml.safe_load(text)
    if not isinstance(config, dict):
        raise SystemExit(
            f"--config must be a mapping of sections (JSON, YAML or a YAML file), got: {text_or_path[:200]!r}"
        )
    if SCHEMA.exists():  # a checkout (always, when Snakemake runs the stage)
        validate(config, str(SCHEMA), set_default=True)
    missing = [s for s in sections if s not in config]
    if missing:
        raise SystemExit(
            f"--config lacks the section(s) {', '.join(missing)} (found: {', '.join(config) or 'none'}); "
            "pass config/config.yaml or the JSON the Snakemake rule passes."
        )
    return config


def config_hash(config: dict) -> str:
    """A short fingerprint of a configuration, to tell whether saved training state belongs to it."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except OSError:  # JSON text longer than a file name can be
        return False
