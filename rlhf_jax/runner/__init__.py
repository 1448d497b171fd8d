"""Experiment configs, the pipeline (main job), CLI and reports."""

from rlhf_jax.runner.config_loader import (ConfigError, config_to_dict, dump_config, load_config,
                                           parse_override)
from rlhf_jax.runner.report import write_report

__all__ = ["ConfigError", "config_to_dict", "dump_config", "load_config", "parse_override",
           "write_report"]
