"""Typed YAML config loading: every error path names file/line/key; overrides; base files; round trip."""

from __future__ import annotations  # the schema's annotations are strings: get_type_hints must resolve them

import dataclasses
import textwrap
from typing import Literal

import pytest

from rlhf_jax.runner.config_loader import (
    ConfigError,
    config_to_dict,
    dump_config,
    load_config,
    parse_override,
)


@dataclasses.dataclass(frozen=True)
class KLConfig:
    beta: float = 0.1  # KL penalty coefficient
    estimator: Literal["k1", "k2", "k3"] = "k1"  # per-token KL estimator


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    lr: float = dataclasses.field(default=1e-5, metadata={"range": (0, None)})  # Adam learning rate
    clip: float = dataclasses.field(default=0.2, metadata={"range": (0.0, 1.0)})  # ratio clip ε
    epochs: int = 4  # PPO epochs per batch
    whiten_rewards: bool = False  # whiten rewards before GAE
    kl: KLConfig = dataclasses.field(default_factory=KLConfig)
    advantage: str = dataclasses.field(default="gae", metadata={"choices": ("gae", "rloo", "grpo")})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    preset: str = "tiny"  # model preset name
    d_model: int = 64
    hidden: tuple[int, ...] = (64, 64)
    init_from: str | None = None  # HF directory to start from


@dataclasses.dataclass(frozen=True)
class DataConfig:
    files: list[str] = dataclasses.field(default_factory=list)
    mix: dict[str, float] = dataclasses.field(default_factory=dict)
    max_len: int = 64

    def __post_init__(self):
        if self.max_len % 8:
            raise ValueError("max_len must be a multiple of 8")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 8


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int  # required: no default
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    lora: LoraConfig | None = None
    out_dir: str = "runs/x"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def error(schema=Config, path=None, overrides=(), base=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(schema, path, overrides, base=base)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


GOOD = """
seed: 3
model:
  preset: small
  hidden: [32, 16]
ppo:
  lr: 3e-6
  epochs: 2
  kl:
    beta: 1
data:
  files: [a.jsonl, b.jsonl]
  mix: {a: 0.25, b: 1}
"""


def test_loads_nested_yaml_with_types(tmp_path):
    cfg = load_config(Config, write(tmp_path, "c.yaml", GOOD))
    assert cfg.seed == 3
    assert cfg.model == ModelConfig(preset="small", d_model=64, hidden=(32, 16))
    assert cfg.ppo.lr == 3e-6 and isinstance(cfg.ppo.lr, float)  # '3e-6' (no dot) is a float
    assert cfg.ppo.kl.beta == 1.0 and isinstance(cfg.ppo.kl.beta, float)  # int accepted for float
    assert cfg.ppo.kl.estimator == "k1" and cfg.ppo.clip == 0.2  # untouched defaults kept
    assert cfg.data.files == ["a.jsonl", "b.jsonl"] and cfg.data.mix == {"a": 0.25, "b": 1.0}
    assert isinstance(cfg.data.mix["b"], float)
    assert cfg.lora is None


def test_overrides_nested_lists_and_coercion(tmp_path):
    cfg = load_config(Config, write(tmp_path, "c.yaml", GOOD), [
        "ppo.lr=1e-5", "model.preset=tiny", "ppo.kl.beta=0", "data.files=[x,y,z]",
        "model.hidden=[8]", "lora.rank=4", "model.init_from=null", "ppo.kl.estimator=k3"])
    assert cfg.ppo.lr == 1e-5
    assert cfg.model.preset == "tiny" and cfg.model.hidden == (8,)
    assert cfg.ppo.kl.beta == 0.0 and isinstance(cfg.ppo.kl.beta, float)
    assert cfg.ppo.kl.estimator == "k3"
    assert cfg.data.files == ["x", "y", "z"] and cfg.data.mix == {"a": 0.25, "b": 1.0}
    assert cfg.lora == LoraConfig(rank=4)  # override creates an Optional section
    assert cfg.model.init_from is None


def test_overrides_without_file_and_base_dict():
    cfg = load_config(Config, overrides=["seed=1", "data.mix.a=2"], base={"seed": 0, "out_dir": "o"})
    assert cfg.seed == 1 and cfg.out_dir == "o" and cfg.data.mix == {"a": 2.0}
    cfg = load_config(Config, base={"seed": 5, "ppo": {"epochs": 9}}, overrides=["ppo.lr=0.5"])
    assert (cfg.ppo.epochs, cfg.ppo.lr) == (9, 0.5)


def test_parse_override():
    assert parse_override("ppo.lr=1e-5") == ("ppo.lr", 1e-5)
    assert parse_override("data.files=[a, b]") == ("data.files", ["a", "b"])
    assert parse_override("name=a=b") == ("name", "a=b")
    assert parse_override("x.flag=true") == ("x.flag", True)
    assert parse_override("m={a: 1}") == ("m", {"a": 1})
    with pytest.raises(ConfigError, match=r"override 'ppo\.lr': expected 'key\.path=value' \(missing '='\)"):
        parse_override("ppo.lr")
    with pytest.raises(ConfigError, match="dotted path"):
        parse_override("ppo..lr=1")
    with pytest.raises(ConfigError, match=r"override 'x=\[a, b': cannot parse"):
        parse_override("x=[a, b")


def test_unknown_key_in_file_names_file_line_dotted_key_and_suggestion(tmp_path):
    path = write(tmp_path, "exp.yaml", """
        seed: 1
        ppo:
          epochs: 2
          lrr: 1e-5
        """)
    assert error(path=path) == f"{path}:4: unknown key 'ppo.lrr'; did you mean 'ppo.lr'?"
    path = write(tmp_path, "exp2.yaml", "seed: 1\nppo:\n  kl:\n    betta: 2\n")
    assert error(path=path) == f"{path}:4: unknown key 'ppo.kl.betta'; did you mean 'ppo.kl.beta'?"
    path = write(tmp_path, "exp3.yaml", "seed: 1\nzzzz: 2\n")
    msg = error(path=path)
    assert msg.startswith(f"{path}:2: unknown key 'zzzz' (valid keys: seed, model, ppo, data, lora, out_dir)")


def test_unknown_key_in_override_names_the_override(tmp_path):
    msg = error(overrides=["seed=1", "ppo.lrr=1e-5"])
    assert msg == "override 'ppo.lrr=1e-5': unknown key 'ppo.lrr'; did you mean 'ppo.lr'?"
    msg = error(path=write(tmp_path, "c.yaml", GOOD), overrides=["modle.preset=x"])
    assert msg == "override 'modle.preset=x': unknown key 'modle'; did you mean 'model'?"
    msg = error(overrides=["seed=1", "ppo.lr.x=3"])
    assert msg == "override 'ppo.lr.x=3': 'ppo.lr' expects float, got {'x': 3} (dict)"
    msg = error(path=write(tmp_path, "d.yaml", GOOD), overrides=["ppo.lr.x=3"])
    assert msg == "override 'ppo.lr.x=3': 'ppo.lr' is a value (3e-06), not a section"


def test_wrong_types_name_key_expected_type_and_value(tmp_path):
    path = write(tmp_path, "t.yaml", "seed: 1\nppo:\n  epochs: abc\n")
    assert error(path=path) == f"{path}:3: 'ppo.epochs' expects int, got 'abc' (str)"
    path = write(tmp_path, "t2.yaml", "seed: 1\nppo:\n  epochs: 2.5\n")
    assert error(path=path) == f"{path}:3: 'ppo.epochs' expects int, got 2.5 (float)"
    path = write(tmp_path, "t3.yaml", "seed: 1\nppo:\n  whiten_rewards: 1\n")
    assert error(path=path) == f"{path}:3: 'ppo.whiten_rewards' expects bool, got 1 (int)"
    assert error(overrides=["seed=true"]) == "override 'seed=true': 'seed' expects int, got True (bool)"
    assert error(overrides=["seed=1", "out_dir=5"]) == (
        "override 'out_dir=5': 'out_dir' expects str, got 5 (int) (quote it to pass a string)")
    assert error(overrides=["seed=1", "model.init_from=3"]) == (
        "override 'model.init_from=3': 'model.init_from' expects str or None, got 3 (int) "
        "(quote it to pass a string)")
    assert error(overrides=["seed=1", "model=3"]) == (
        "override 'model=3': 'model' expects a section (ModelConfig), got 3 (int)")
    assert error(overrides=["seed=1", "data.mix={a: x}"]) == (
        "override 'data.mix={a: x}': 'data.mix.a' expects float, got 'x' (str)")


def test_list_element_errors_point_at_the_element_line(tmp_path):
    path = write(tmp_path, "l.yaml", """
        seed: 1
        model:
          hidden:
            - 4
            - four
        """)
    assert error(path=path) == f"{path}:5: 'model.hidden[1]' expects int, got 'four' (str)"
    assert error(overrides=["seed=1", "model.hidden=5"]) == (
        "override 'model.hidden=5': 'model.hidden' expects tuple[int, ...], got 5 (int)")


def test_literal_choices_and_ranges(tmp_path):
    assert error(overrides=["seed=1", "ppo.kl.estimator=k9"]) == (
        "override 'ppo.kl.estimator=k9': 'ppo.kl.estimator' must be one of 'k1', 'k2', 'k3', got 'k9'")
    assert error(overrides=["seed=1", "ppo.advantage=rlooo"]) == (
        "override 'ppo.advantage=rlooo': 'ppo.advantage' must be one of 'gae', 'rloo', 'grpo', "
        "got 'rlooo'; did you mean 'rloo'?")
    path = write(tmp_path, "r.yaml", "seed: 1\nppo:\n  clip: 1.5\n")
    assert error(path=path) == f"{path}:3: 'ppo.clip' must be in [0.0, 1.0], got 1.5"
    assert error(overrides=["seed=1", "ppo.lr=-1e-3"]) == (
        "override 'ppo.lr=-1e-3': 'ppo.lr' must be >= 0, got -0.001")
    # bounds are inclusive
    assert load_config(Config, overrides=["seed=1", "ppo.clip=1", "ppo.lr=0"]).ppo.clip == 1.0


def test_post_init_value_error_names_the_section(tmp_path):
    path = write(tmp_path, "p.yaml", "seed: 1\ndata:\n  max_len: 12\n")
    assert error(path=path) == f"{path}:2: invalid section 'data': max_len must be a multiple of 8"


def test_missing_required_and_missing_file_and_bad_yaml(tmp_path):
    path = write(tmp_path, "m.yaml", "ppo:\n  epochs: 1\n")
    assert error(path=path) == f"{path}: missing required key 'seed'"
    assert error() == "config: missing required key 'seed'"
    missing = tmp_path / "nope.yaml"
    assert error(path=missing) == f"config file not found: {missing}"
    path = write(tmp_path, "bad.yaml", "seed: 1\nppo:\n  lr: [1, 2\n  epochs: 3\n")
    msg = error(path=path)
    assert msg.startswith(f"{path}:4: invalid YAML:"), msg
    path = write(tmp_path, "dup.yaml", "seed: 1\nppo:\n  lr: 1\n  lr: 2\n")
    assert error(path=path) == f"{path}:4: duplicate key 'ppo.lr' (first at line 3)"
    path = write(tmp_path, "list.yaml", "- a\n- b\n")
    assert error(path=path) == f"{path}: the top level must be a mapping of keys, got list"


def test_empty_file_and_empty_section(tmp_path):
    cfg = load_config(Config, write(tmp_path, "e.yaml", ""), ["seed=2"])
    assert cfg == Config(seed=2)
    cfg = load_config(Config, write(tmp_path, "s.yaml", "seed: 2\nppo:\n  # nothing yet\n"))
    assert cfg.ppo == PPOConfig()


def test_base_files_deep_merge_relative_to_file(tmp_path):
    (tmp_path / "common").mkdir()
    write(tmp_path / "common", "root.yaml", """
        seed: 7
        out_dir: runs/root
        model: {preset: small, d_model: 128}
        """)
    write(tmp_path / "common", "base.yaml", """
        base: root.yaml
        ppo:
          lr: 0.001
          epochs: 8
          kl: {beta: 0.5, estimator: k2}
        """)
    exp = write(tmp_path, "exp.yaml", """
        base: common/base.yaml
        ppo:
          epochs: 1
          kl:
            beta: 0.01
        """)
    cfg = load_config(Config, exp, ["ppo.lr=2e-3"])
    assert cfg.seed == 7 and cfg.out_dir == "runs/root"
    assert cfg.model.preset == "small" and cfg.model.d_model == 128
    assert (cfg.ppo.lr, cfg.ppo.epochs) == (2e-3, 1)
    assert cfg.ppo.kl == KLConfig(beta=0.01, estimator="k2")


def test_base_file_errors_point_into_the_base_file(tmp_path):
    base = write(tmp_path, "base.yaml", "seed: 1\nppo:\n  epochz: 3\n")
    exp = write(tmp_path, "exp.yaml", "base: base.yaml\nppo:\n  lr: 0.1\n")
    assert error(path=exp) == f"{base}:3: unknown key 'ppo.epochz'; did you mean 'ppo.epochs'?"
    exp = write(tmp_path, "exp2.yaml", "seed: 1\nbase: missing.yaml\n")
    assert error(path=exp) == f"{exp}:2: base config file not found: {tmp_path / 'missing.yaml'}"
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    assert "circular 'base:' chain" in error(path=tmp_path / "a.yaml")
    exp = write(tmp_path, "exp3.yaml", "base: 3\n")
    assert error(path=exp) == f"{exp}:1: 'base' must be a file path or a list of file paths, got 3"


def test_round_trip_dump_load(tmp_path):
    cfg = load_config(Config, write(tmp_path, "c.yaml", GOOD), ["lora.rank=2", "ppo.lr=1e-7"])
    out = dump_config(cfg, tmp_path / "run" / "config.yaml")
    assert out.exists()
    again = load_config(Config, out)
    assert again == cfg
    d = config_to_dict(cfg)
    assert d["model"]["hidden"] == [32, 16] and isinstance(d["model"]["hidden"], list)
    assert d["lora"] == {"rank": 2} and d["ppo"]["kl"]["estimator"] == "k1"
    # the default config round-trips as well (None, empty list/dict)
    plain = Config(seed=0)
    assert load_config(Config, dump_config(plain, tmp_path / "p.yaml")) == plain


def test_partial_section_keeps_a_non_default_default_instance():
    @dataclasses.dataclass(frozen=True)
    class Outer:
        model: ModelConfig = dataclasses.field(default_factory=lambda: ModelConfig(d_model=256))

    cfg = load_config(Outer, overrides=["model.preset=big"])
    assert cfg.model == ModelConfig(preset="big", d_model=256)
