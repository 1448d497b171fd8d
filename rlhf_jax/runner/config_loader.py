"""Typed YAML configs: a YAML file (plus ``key.path=value`` overrides) mapped onto frozen dataclasses.

The schema is a tree of (frozen) dataclasses, cleanrl style, one docstring or comment per field.
Field metadata declares value checks::

    lr: float = dataclasses.field(default=1e-5, metadata={'range': (0, None)})   # inclusive; None = open
    kl: str = dataclasses.field(default='k1', metadata={'choices': ('k1', 'k2', 'k3')})

Layers, lowest first: ``base`` dict (defaults from code) < ``base:`` files named in the YAML (paths
relative to the file naming them; deep-merged) < the file's own keys < overrides. Every error is a
one-line :class:`ConfigError` naming where the offending value came from (``file.yaml:12`` or
``override 'ppo.lr=x'``) and the full dotted key, e.g.
``exp.yaml:7: unknown key 'ppo.lrr'; did you mean 'ppo.lr'?``.

Scalars follow YAML 1.1 as in PyYAML, except that ``1e-5`` (exponent without a dot) is a float.
A float field must be finite (``.inf`` and ``.nan`` are rejected). An override with an empty value
on a section (``ppo.kl=``) and a key given twice among the overrides are errors.
The top-level key ``base`` is reserved for file inheritance.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import functools
import math
import os
import pathlib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import yaml

__all__ = ["ConfigError", "load_config", "parse_override", "config_to_dict", "dump_config"]

_NoneType = type(None)
KeyPath = tuple  # a key path: tuple of dict keys, list positions written as '[i]'


class ConfigError(ValueError):
    """A user-facing configuration error; the message is one line naming file/line and key."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-5`` / ``3E4`` as floats (YAML 1.2 style)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        part = str(part)
        out += part if (part.startswith("[") or not out) else "." + part
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- YAML with lines


def _read_yaml(filename: str) -> tuple[dict, dict[KeyPath, str]]:
    """Parse one file; returns (data, sources) with sources[key_path] = 'file:line'."""
    try:
        with open(filename, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {filename}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {filename}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{filename}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                          f"{e.start})") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        sources: dict[KeyPath, str] = {(): filename}
        if node is None:
            return {}, sources
        _walk(loader, node, (), sources, filename)
        data = loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{filename}:{mark.line + 1}" if mark is not None else filename
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data, sources


def _walk(loader: _Loader, node: yaml.Node, prefix: KeyPath, sources: dict, filename: str,
          above: frozenset = frozenset()) -> None:
    if id(node) in above:  # an alias to one of its own ancestors: the value would contain itself
        raise ConfigError(f"{filename}:{node.start_mark.line + 1}: recursive YAML alias at "
                          f"{_dotted(prefix)!r} (a value cannot contain itself)")
    above = above | {id(node)}
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                raise ConfigError(f"{filename}:{line}: unsupported (unhashable) key {_short(key)}") from None
            if first is not None:
                raise ConfigError(
                    f"{filename}:{line}: duplicate key {_dotted(prefix + (key,))!r} (first at line {first})")
            seen[key] = line
            sources[prefix + (key,)] = f"{filename}:{line}"
            _walk(loader, value_node, prefix + (key,), sources, filename, above)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sources[prefix + (f"[{i}]",)] = f"{filename}:{item.start_mark.line + 1}"
            _walk(loader, item, prefix + (f"[{i}]",), sources, filename, above)


def _drop_under(sources: dict, path: KeyPath) -> None:
    for p in [p for p in sources if p[: len(path)] == path]:
        del sources[p]


def _merge(dst: dict, src: dict, dst_src: dict, src_src: dict, prefix: KeyPath = ()) -> None:
    """Deep-merge ``src`` over ``dst`` in place (mappings merge, anything else replaces)."""
    for key, value in src.items():
        path = prefix + (key,)
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, dst_src, src_src, path)
            if path in src_src:
                dst_src[path] = src_src[path]
        else:
            dst[key] = copy.deepcopy(value)
            _drop_under(dst_src, path)
            dst_src.update({p: w for p, w in src_src.items() if p[: len(path)] == path})


def _load_file(filename: str, stack: tuple[str, ...] = ()) -> tuple[dict, dict[KeyPath, str]]:
    """A file with its ``base:`` chain resolved."""
    real = os.path.realpath(filename)
    if real in stack:
        raise ConfigError(f"{filename}: circular 'base:' chain ({' -> '.join(stack + (real,))})")
    data, sources = _read_yaml(filename)
    if "base" not in data:
        return data, sources
    bases = data.pop("base")
    where = sources.pop(("base",))
    _drop_under(sources, ("base",))
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{where}: 'base' must be a file path or a list of file paths, got {_short(bases)}")
    merged: dict = {}
    merged_src: dict[KeyPath, str] = {(): filename}
    for base in bases:
        base_path = os.path.join(os.path.dirname(filename), os.path.expanduser(base))
        if not os.path.exists(base_path):
            raise ConfigError(f"{where}: base config file not found: {base_path}")
        base_data, base_src = _load_file(base_path, stack + (real,))
        base_src.pop((), None)
        _merge(merged, base_data, merged_src, base_src)
    _merge(merged, data, merged_src, sources)
    return merged, merged_src


# ----------------------------------------------------------------------------- overrides


def parse_override(s: str) -> tuple[str, Any]:
    """``'ppo.lr=1e-5'`` -> ``('ppo.lr', 1e-05)``; the value is parsed as a YAML scalar or flow node."""
    if "=" not in s:
        raise ConfigError(f"override {s!r}: expected 'key.path=value' (missing '=')")
    key, raw = s.split("=", 1)
    key = key.strip()
    if not key or any(not part.strip() for part in key.split(".")):
        raise ConfigError(f"override {s!r}: the key must be a dotted path like 'ppo.lr'")
    try:
        value = yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"override {s!r}: cannot parse the value {raw!r}: {problem}") from None
    return key, value


def _apply_override(data: dict, sources: dict, s: str) -> None:
    key, value = parse_override(s)
    parts = tuple(p.strip() for p in key.split("."))
    node = data
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}
            sources.setdefault(parts[: i + 1], f"override {s!r}")
        if not isinstance(node[part], dict):
            raise ConfigError(
                f"override {s!r}: {_dotted(parts[: i + 1])!r} is a value ({_short(node[part])}), not a section")
        node = node[part]
    node[parts[-1]] = value
    _drop_under(sources, parts)
    sources[parts] = f"override {s!r}"


# ----------------------------------------------------------------------------- schema building


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class _Ctx:
    def __init__(self, sources: dict[KeyPath, str]):
        self.sources = sources

    def where(self, path: KeyPath) -> str:
        for n in range(len(path), -1, -1):
            if path[:n] in self.sources:
                return self.sources[path[:n]]
        return "config"

    def error(self, path: KeyPath, msg: str) -> ConfigError:
        return ConfigError(f"{self.where(path)}: {msg}")


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is _NoneType:
        return "None"
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if dataclasses.is_dataclass(tp):
        return f"a section ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, path: KeyPath, ctx: _Ctx, shown: Any = None) -> Any:
    """Check ``value`` against annotation ``tp`` and convert (int->float, list->tuple, dict->dataclass)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def bad(extra: str = "") -> ConfigError:
        return ctx.error(path, f"{_dotted(path)!r} expects {_type_name(shown or tp)}, got {_short(value)} "
                               f"({type(value).__name__}){extra}")

    if tp is Any or tp is object:
        return value
    if origin is typing.Union or origin is types.UnionType:
        if value is None and _NoneType in args:
            return None
        options = [a for a in args if a is not _NoneType]
        if isinstance(value, dict):  # a mapping can only mean the dataclass / dict option
            options = [a for a in options if _is_dataclass_type(a) or typing.get_origin(a) in (dict, Mapping)
                       or a is dict] or options
        if len(options) == 1:
            return _convert(value, options[0], path, ctx, shown=tp)
        for option in options:
            try:
                return _convert(value, option, path, ctx)
            except ConfigError:
                continue
        raise bad()
    if origin is Literal:
        for choice in args:
            if value == choice and isinstance(value, bool) == isinstance(choice, bool):
                return choice
        hint = ""
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [a for a in args if isinstance(a, str)], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ctx.error(path, f"{_dotted(path)!r} must be one of {', '.join(repr(a) for a in args)}, "
                              f"got {_short(value)}{hint}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if value is None:
            if ctx.where(path).startswith("override"):  # 'ppo.kl=' would silently reset the section
                raise ctx.error(path, f"{_dotted(path)!r} is a section: an empty value would reset "
                                      f"all of it to the defaults; set its keys instead "
                                      f"({_dotted(path)}.KEY=VALUE)")
            value = {}
        if not isinstance(value, dict):
            raise bad()
        return _build(tp, value, path, ctx)
    if origin is tuple or tp is tuple or origin in (list, Sequence) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise bad()
        items = list(value)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise ctx.error(path, f"{_dotted(path)!r} expects {len(args)} items, got {len(items)}")
            types_ = list(args)
        else:
            types_ = [args[0] if args else Any] * len(items)
        out = [_convert(v, t, path + (f"[{i}]",), ctx) for i, (v, t) in enumerate(zip(items, types_))]
        return out if (origin is list or tp is list) else tuple(out)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise bad()
        key_t, val_t = args if args else (Any, Any)
        return {_convert(k, key_t, path + (k,), ctx): _convert(v, val_t, path + (k,), ctx)
                for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        if not math.isfinite(value):  # .inf / .nan train to NaN losses; no field means them
            raise ctx.error(path, f"{_dotted(path)!r} must be a finite number, got {_short(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad(" (quote it to pass a string)" if isinstance(value, (int, float, bool)) else "")
        return value
    if tp is _NoneType:
        if value is not None:
            raise bad()
        return None
    if isinstance(tp, type) and issubclass(tp, pathlib.PurePath):
        if not isinstance(value, (str, pathlib.PurePath)):
            raise bad()
        return tp(value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if value == member.name or value == member.value or value is member:
                return member
        names = [m.name for m in tp]
        raise ctx.error(path, f"{_dotted(path)!r} must be one of {', '.join(map(repr, names))}, got {_short(value)}")
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise bad()
        return value
    raise TypeError(f"config schema: unsupported annotation {tp!r} for {_dotted(path)!r}")


def _check_metadata(field: dataclasses.Field, value: Any, path: KeyPath, ctx: _Ctx) -> None:
    meta = field.metadata
    if "choices" in meta and value is not None and value not in tuple(meta["choices"]):
        choices = tuple(meta["choices"])
        close = difflib.get_close_matches(value, [c for c in choices if isinstance(c, str)], n=1) \
            if isinstance(value, str) else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ctx.error(path, f"{_dotted(path)!r} must be one of {', '.join(map(repr, choices))}, "
                              f"got {_short(value)}{hint}")
    if "range" in meta and value is not None:
        lo, hi = meta["range"]
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and (
                    (lo is not None and not v >= lo) or (hi is not None and not v <= hi)):
                bound = (f"in [{lo}, {hi}]" if lo is not None and hi is not None
                         else f">= {lo}" if lo is not None else f"<= {hi}")
                raise ctx.error(path, f"{_dotted(path)!r} must be {bound}, got {_short(v)}")


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _build(cls: type, data: dict, path: KeyPath, ctx: _Ctx) -> Any:
    hints = _hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = (f"; did you mean {_dotted(path + (close[0],))!r}?" if close
                    else f" (valid keys: {', '.join(names)})")
            raise ctx.error(path + (key,), f"unknown key {_dotted(path + (key,))!r}{hint}")
    kwargs = {}
    for field in fields:
        fpath = path + (field.name,)
        if field.name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ctx.error(path, f"missing required key {_dotted(fpath)!r}")
            continue
        value = data[field.name]
        default = _default_of(field) if isinstance(value, dict) else None
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            merged = config_to_dict(default)  # a partial section keeps the field's own default values
            _merge(merged, value, {}, {})
            value = merged
        value = _convert(value, hints[field.name], fpath, ctx)
        _check_metadata(field, value, fpath, ctx)
        kwargs[field.name] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:
        what = f"section {_dotted(path)!r}" if path else f"config ({cls.__name__})"
        raise ctx.error(path, f"invalid {what}: {e}") from None


# ----------------------------------------------------------------------------- public API


def load_config(schema: type, path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                base: dict | None = None) -> Any:
    """Build a ``schema`` instance from ``base`` (dict or instance) < YAML ``path`` < ``overrides``."""
    if not _is_dataclass_type(schema):
        raise TypeError(f"schema must be a dataclass type, got {schema!r}")
    if isinstance(overrides, str):
        overrides = [overrides]
    data: dict = {}
    sources: dict[KeyPath, str] = {(): "config"}
    if base is not None:
        if dataclasses.is_dataclass(base) and not isinstance(base, type):
            base = config_to_dict(base)
        base_src = {(): "load_config(base=...)"}
        base_src.update({(k,): base_src[()] for k in base})
        _merge(data, base, sources, base_src)
        sources[()] = base_src[()]
    if path is not None:
        file_data, file_src = _load_file(os.fspath(path))
        _merge(data, file_data, sources, file_src)
        sources[()] = file_src[()]
    seen: dict[str, str] = {}
    for s in overrides:
        key = ".".join(p.strip() for p in parse_override(s)[0].split("."))
        if key in seen:
            raise ConfigError(f"overrides {seen[key]!r} and {s!r} both set {key!r}; give it once")
        seen[key] = s
    for s in overrides:
        _apply_override(data, sources, s)
    return _build(schema, data, (), _Ctx(sources))


def config_to_dict(cfg: Any) -> Any:
    """A plain, YAML-safe tree: dataclasses -> dicts, tuples -> lists, paths -> str, enums -> names."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}
    if isinstance(cfg, Mapping):
        return {config_to_dict(k): config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, pathlib.PurePath):
        return str(cfg)
    if isinstance(cfg, enum.Enum):
        return cfg.name
    if hasattr(cfg, "item") and getattr(cfg, "shape", None) == ():  # numpy / jax scalars
        return cfg.item()
    return cfg


def dump_config(cfg: Any, path: str | os.PathLike) -> pathlib.Path:
    """Write the resolved config as YAML; ``load_config(type(cfg), path)`` gives back an equal object."""
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True)
    out.write_text(text, encoding="utf-8")
    return out
