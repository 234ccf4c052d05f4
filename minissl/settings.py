"""A method's settings from text: ``--set KEY=VALUE`` and ``--config FILE`` of the CLI.

Every method keeps its hyperparameters in a config dataclass (``SimCLRConfig``, ...); the
fields, their types and defaults are the single list of what can be set, and the comment on a
field's line is its one-line explanation (``minissl list METHOD`` prints them). Values are
checked against the field's type here, before anything is built, so that a typo or a wrong
type is one clear line naming the key instead of a TypeError deep in a constructor.

A config file is JSON (``.json``) or TOML (``.toml``, with Python >= 3.11's ``tomllib``): one
flat table of settings, ``{"temperature": 0.2, "proj_dim": 128}``. ``--set`` wins over the file.
"""
import dataclasses
import inspect
import json
import os
import re
import typing

MAX_CONFIG_BYTES = 1 << 20   # a settings file is a few lines; a bigger one is not one

_COMMENT = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.*?)\s*$")
_MORE = re.compile(r"^\s+#\s*(.*?)\s*$")


class SettingsError(ValueError):
    """A bad setting: the message is one line for the user."""


def fields(config_class):
    """``[(name, type, default, explanation)]`` of a config dataclass, in declaration order.

    The explanation is the comment on the field's line in the source (with the comment lines
    that continue it), or ``metadata["help"]`` when the field sets one.
    """
    notes = {}
    for klass in reversed(config_class.__mro__[:-1]):   # a subclass's comment wins
        try:
            last = None
            for line in inspect.getsource(klass).splitlines():
                m = _COMMENT.match(line)
                more = _MORE.match(line)
                if m:
                    last = m.group(1)
                    notes[last] = m.group(2)
                elif more and last:      # a comment continued on the lines below
                    notes[last] += " " + more.group(1)
                else:
                    last = None
        except (OSError, TypeError):   # no source (a frozen build): no comments
            pass
    hints = typing.get_type_hints(config_class)
    out = []
    for f in dataclasses.fields(config_class):
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING
                   else None)
        out.append((f.name, hints.get(f.name, type(default)), default,
                    f.metadata.get("help", notes.get(f.name, ""))))
    return out


def _type_name(kind):
    if kind is tuple:
        return "comma-separated integers"
    if typing.get_origin(kind) is typing.Union:
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        return f"{_type_name(inner[0])} or none"
    return getattr(kind, "__name__", str(kind))


def _convert(key, kind, value, where):
    """``value`` (a str from ``--set``, or a JSON/TOML value) as a value of type ``kind``."""
    def bad(reason=""):
        return SettingsError(f"{where}: {key}={value!r} is not {_type_name(kind)}"
                             + (f" ({reason})" if reason else ""))
    if typing.get_origin(kind) is typing.Union:     # Optional[int]: "none" or an int
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        inner = [a for a in typing.get_args(kind) if a is not type(None)][0]
        try:
            return _convert(key, inner, value, where)
        except SettingsError:
            raise bad() from None
    text = isinstance(value, str)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if text and value.lower() in ("true", "1", "yes", "on"):
            return True
        if text and value.lower() in ("false", "0", "no", "off"):
            return False
        raise bad("true or false")
    if kind is int:
        if isinstance(value, bool) or not (text or isinstance(value, int)):
            raise bad()
        try:
            return int(value)
        except ValueError:
            raise bad() from None
    if kind is float:
        if isinstance(value, bool) or not (text or isinstance(value, (int, float))):
            raise bad()
        try:
            v = float(value)
        except ValueError:
            raise bad() from None
        if v != v or v in (float("inf"), float("-inf")):
            raise bad("not finite")
        return v
    if kind is str:
        if not text:
            raise bad()
        return value
    if kind is tuple:    # the widths of a head: "512,512" or [512, 512]
        parts = value.split(",") if text else value
        if not isinstance(parts, (list, tuple)) or not parts:
            raise bad()
        return tuple(_convert(key, int, p.strip() if isinstance(p, str) else p, where)
                     for p in parts)
    raise bad(f"a {_type_name(kind)} cannot be set from the command line")


def parse(config_class, pairs=(), file=None, where="--set"):
    """The overrides of ``config_class``: ``file``'s table, then each ``KEY=VALUE`` of
    ``pairs`` (later wins), each key known and each value of its field's type."""
    out = validate(config_class, read_file(file), f"--config {file}") if file else {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"{where} {pair!r}: expected KEY=VALUE")
        out.update(validate(config_class, {key.strip(): value.strip()}, where))
    return out


def validate(config_class, table, where):
    """``table`` (setting -> value) with each key a field of ``config_class`` and each value
    converted to the field's type; SettingsError naming ``where`` and the key otherwise."""
    known = {name: kind for name, kind, _, _ in fields(config_class)} if config_class else {}
    out = {}
    for key, value in table.items():
        if key not in known:
            raise SettingsError(f"{where}: unknown setting {key!r} of "
                                f"{getattr(config_class, '__name__', 'a method without settings')}"
                                f"; known: {', '.join(known) or 'none'}")
        out[key] = _convert(key, known[key], value, where)
    return out


def read_file(path):
    """The flat table of settings in a JSON or TOML file."""
    where = f"--config {path}"
    if not os.path.isfile(path):
        raise SettingsError(f"{where}: no such file")
    if os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise SettingsError(f"{where}: {os.path.getsize(path)} bytes, more than a settings file "
                            f"holds (at most {MAX_CONFIG_BYTES})")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        if path.endswith(".toml"):
            try:
                import tomllib
            except ImportError:
                raise SettingsError(f"{where}: TOML needs Python >= 3.11 (tomllib); "
                                    f"write the settings as JSON") from None
            table = tomllib.loads(raw.decode("utf-8"))
        else:
            table = json.loads(raw.decode("utf-8"))
    except SettingsError:
        raise
    except (ValueError, UnicodeDecodeError) as e:   # JSONDecodeError, TOMLDecodeError
        raise SettingsError(f"{where}: not valid {'TOML' if path.endswith('.toml') else 'JSON'}"
                            f" ({str(e).splitlines()[0]})") from None
    if not isinstance(table, dict):
        raise SettingsError(f"{where}: expected one table of settings, got "
                            f"{type(table).__name__}")
    return table


def describe(config_class):
    """The lines ``minissl list METHOD`` prints: name, type, default, explanation."""
    rows = fields(config_class) if config_class else []
    width = max((len(n) for n, *_ in rows), default=0)
    lines = []
    for name, kind, default, note in rows:
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        lines.append(f"  {name:{width}s} = {shown!s:8s} ({_type_name(kind)}) {note}".rstrip())
    return lines
