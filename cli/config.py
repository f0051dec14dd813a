"""The CLI's config file: named contexts, each a gateway to talk to (its URL, the operator
token's file, how to trust its TLS certificate), and the current one, as kubeconfig does.

    current-context: prod
    contexts:
      prod:
        gateway: https://ferry.example.net:8470
        token-file: ~/.config/ferry/prod.token      # relative: to this file's folder
        ca-file: ~/.config/ferry/prod-ca.pem         # https: the CA (or certificate) to trust
      lab:
        gateway: https://10.215.0.1:8470
        token-file: lab.token
        insecure: true                               # https without checking the certificate

Where: FERRY_CONFIG, else $XDG_CONFIG_HOME/ferry/config.yaml, else ~/.config/ferry/config.yaml.
Every mistake is reported with the file, the line, the context and the key.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

import yaml

TOP_KEYS = ("current-context", "contexts")
CONTEXT_KEYS = ("gateway", "token-file", "ca-file", "insecure")
_BOOL_TAG = "tag:yaml.org,2002:bool"
_STR_TAG = "tag:yaml.org,2002:str"


class ConfigError(Exception):
    """A config file the CLI cannot use, said with where: file[:line], context, key."""

    def __init__(self, path: Path, message: str, *, context: str | None = None,
                 key: str | None = None, line: int | None = None):
        self.path, self.context, self.key, self.line = path, context, key, line
        where = f"{path}:{line}" if line else str(path)
        if context is not None:
            where += f": context {context!r}"
        if key is not None:
            where += f", key {key!r}" if context is not None else f": key {key!r}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Context:
    name: str
    gateway: str  # http(s)://host[:port][/prefix], without a trailing slash
    token_file: Path | None = None
    ca_file: Path | None = None
    insecure: bool = False
    # Where each key is written, for the errors found when the context is used (a token file
    # that is missing, say).
    lines: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    path: Path
    exists: bool
    current: str | None = None
    current_line: int | None = None
    contexts: dict[str, Context] = field(default_factory=dict)

    def context(self, name: str, *, named_by: str) -> Context:
        """The context `name`; `named_by` says who asked for it (--context, current-context)."""
        if name in self.contexts:
            return self.contexts[name]
        if not self.exists:
            raise ConfigError(self.path, f"no context {name!r} ({named_by}): this config file "
                              "does not exist")
        known = ", ".join(sorted(self.contexts)) or "none"
        line = self.current_line if named_by == "current-context" else None
        raise ConfigError(self.path, f"no context {name!r} ({named_by}); the file has: {known}",
                          line=line)


def config_path(environ: Mapping[str, str]) -> tuple[Path, bool]:
    """The config file's path, and whether FERRY_CONFIG named it (then it must exist)."""
    if environ.get("FERRY_CONFIG"):
        return Path(environ["FERRY_CONFIG"]).expanduser(), True
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")) / ".config")
    return Path(base).expanduser() / "ferry" / "config.yaml", False


def load(environ: Mapping[str, str] = os.environ) -> Config:
    path, named = config_path(environ)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if named:
            raise ConfigError(path, "no such file (named by FERRY_CONFIG)") from None
        return Config(path, exists=False)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot read it: {exc}") from None
    return parse(text, path)


def parse(text: str, path: Path) -> Config:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ConfigError(path, f"not valid YAML: {exc.problem or exc.context}",
                          line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, f"not valid YAML: {exc}") from None
    if root is None:  # an empty file: no contexts yet
        return Config(path, exists=True)
    entries = _mapping(root, path, "the file must be a mapping of current-context and contexts")
    current, current_line, contexts = None, None, {}
    for key, value in entries.items():
        if key not in TOP_KEYS:
            raise ConfigError(path, f"unknown key (allowed: {', '.join(TOP_KEYS)})", key=key,
                              line=_line(value))
        if key == "current-context":
            current, current_line = _text(value, path, key=key), _line(value)
        elif not (isinstance(value, yaml.ScalarNode) and value.tag == "tag:yaml.org,2002:null"):
            for name, node in _mapping(value, path, "contexts must be a mapping of context "
                                       "names to their settings", key="contexts").items():
                contexts[name] = _context(name, node, path)
    return Config(path, True, current, current_line, contexts)


def _context(name: str, node: yaml.Node, path: Path) -> Context:
    settings = _mapping(node, path, "must be a mapping of gateway, token-file, ca-file, "
                        "insecure", context=name)
    for key, value in settings.items():
        if key not in CONTEXT_KEYS:
            raise ConfigError(path, f"unknown key (allowed: {', '.join(CONTEXT_KEYS)})",
                              context=name, key=key, line=_line(value))
    if "gateway" not in settings:
        raise ConfigError(path, "missing: the gateway's URL (https://host:8470)", context=name,
                          key="gateway", line=_line(node))
    gateway = _url(_text(settings["gateway"], path, context=name, key="gateway"), path,
                   {"context": name, "key": "gateway", "line": _line(settings["gateway"])})
    insecure = False
    if "insecure" in settings:
        value = settings["insecure"]
        if not (isinstance(value, yaml.ScalarNode) and value.tag == _BOOL_TAG):
            raise ConfigError(path, "must be true or false", context=name, key="insecure",
                              line=_line(value))
        insecure = value.value.lower() in ("true", "yes", "on", "y")
    files = {key: _file(_text(settings[key], path, context=name, key=key), path)
             for key in ("token-file", "ca-file") if key in settings}
    ca_file = files.get("ca-file")
    if not gateway.startswith("https://") and (ca_file or insecure):
        key = "ca-file" if ca_file else "insecure"
        raise ConfigError(path, f"the gateway {gateway} is plain http: a CA or `insecure` only "
                          "applies to https:// (did you mean https?)", context=name, key=key,
                          line=_line(settings[key]))
    if ca_file and insecure:
        raise ConfigError(path, "set ca-file (check the certificate against it) or insecure "
                          "(do not check it), not both", context=name, key="insecure",
                          line=_line(settings["insecure"]))
    return Context(name, gateway, files.get("token-file"), ca_file, insecure,
                   {key: _line(value) for key, value in settings.items()})


def _mapping(node: yaml.Node, path: Path, message: str, **where) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(path, message, line=_line(node), **where)
    entries: dict[str, yaml.Node] = {}
    for key, value in node.value:
        if not (isinstance(key, yaml.ScalarNode) and key.value.strip()):
            raise ConfigError(path, "a key must be a name",
                              line=_line(key), **{k: v for k, v in where.items() if k != "key"})
        if key.value in entries:
            raise ConfigError(path, "written twice (only the last one would count)",
                              line=_line(key), **_keyed(where, key.value))
        entries[key.value] = value
    return entries


def _keyed(where: dict, name: str) -> dict:
    """Where a repeated entry is: a key of a context, a context among contexts, or a key."""
    if "context" in where:
        return {"context": where["context"], "key": name}
    if where.get("key") == "contexts":
        return {"context": name}
    return {"key": name}


def _text(node: yaml.Node, path: Path, **where) -> str:
    if not (isinstance(node, yaml.ScalarNode) and node.tag == _STR_TAG and node.value.strip()):
        raise ConfigError(path, "must be a non-empty text", line=_line(node), **where)
    return node.value.strip()


def _url(text: str, path: Path, where: dict) -> str:
    parts = urlsplit(text)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(path, f"must be an http:// or https:// URL with a host, not {text!r}",
                          **where)
    if not port_ok:
        raise ConfigError(path, f"the port of {text!r} is not a port number", **where)
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(path, f"{text!r}: no user, query or fragment in the URL (the token "
                          "goes in token-file)", **where)
    return text.rstrip("/")


def _file(text: str, config: Path) -> Path:
    # Like kubeconfig: a relative path is relative to the config file's folder, so that the
    # file and its tokens can be moved together.
    path = Path(text).expanduser()
    return path if path.is_absolute() else config.parent / path


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


# -- ferry config use-context ----------------------------------------------------------------

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@/-]*$")


def use_context(config: Config, name: str) -> None:
    """Make `name` the current context, editing only that line of the file (its comments and
    layout stay as the operator wrote them)."""
    config.context(name, named_by="use-context")
    target = config.path.resolve()  # a symlinked config (a dotfiles repository) stays a link
    text = target.read_text(encoding="utf-8")
    value = name if _PLAIN_NAME.match(name) else '"' + name.replace("\\", "\\\\").replace(
        '"', '\\"') + '"'
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    existing = None
    if isinstance(root, yaml.MappingNode):
        existing = next((v for k, v in root.value if k.value == "current-context"), None)
    if existing is not None:
        start, end = existing.start_mark.index, existing.end_mark.index
        edited = text[:start] + value + text[end:]
    else:
        edited = f"current-context: {value}\n" + text
    try:
        understood = parse(edited, config.path).current == name
    except ConfigError:
        understood = False
    if not understood:  # a layout this edit does not follow (a flow-style mapping, say)
        raise ConfigError(config.path, f"could not set current-context to {name!r} in this "
                          "file's layout; write `current-context: NAME` at its top by hand")
    mode = target.stat().st_mode & 0o777
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=target.parent,
                                     prefix=f".{target.name}.", delete=False) as handle:
        handle.write(edited)
    os.chmod(handle.name, mode)
    os.replace(handle.name, target)
