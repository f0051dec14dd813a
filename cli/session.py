"""Which gateway this `ferry` talks to, with which token and trust, and its calls to it.

Each setting is taken from the first of (docs/cli.md, "Which gateway"):
1. the context named by --context (a flag),
2. the FERRY_* variables the CLI has always read (FERRY_GATEWAY_HOST/_PORT, FERRY_GATEWAY_TLS_CERT,
   FERRY_OPERATOR_TOKEN, FERRY_STATE_DIR),
3. the config file's current-context,
4. the defaults (https://127.0.0.1:8470 trusting the installation's CA in the state dir, the
   token in the state dir).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from cli import config as config_file
from cli.client import Gateway, GatewayError
from cli.exits import CliError, Exit
from shared.settings import Settings
from shared.tls import gateway_scheme, trusted_ca

CONTEXT = "ferry.context"  # in click's context meta: the --context flag's value


def _remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta[CONTEXT] = value


def context_option(command):
    return click.option("--context", metavar="NAME", expose_value=False, callback=_remember,
                        help="Talk to the gateway of this context of the config file "
                             "(`ferry config get-contexts`).")(command)


@dataclass(frozen=True)
class Target:
    """The gateway to call, and where each part of it came from (for the errors)."""

    url: str
    token: str
    token_from: str
    cafile: str | None = None
    insecure: bool = False
    context: str | None = None  # the context that gave the URL, if one did

    def gateway(self) -> Gateway:
        return Gateway(self.url, self.token, self.cafile, insecure=self.insecure)


def settings_from_environment() -> Settings:
    """The FERRY_* settings, a bad value said as the variable and its problem."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"FERRY_{str(e['loc'][0]).upper()}={e.get('input')!r}: {e['msg']}"
            for e in exc.errors())
        raise CliError(f"a FERRY_* variable is not valid: {problems}", Exit.USAGE) from None


def resolve(flag: str | None) -> Target:
    """The gateway for this invocation; `flag`: the --context given, if any."""
    settings = settings_from_environment()
    from_env = settings.model_fields_set  # what FERRY_* variables set, not the defaults
    try:
        config = config_file.load(os.environ)
        explicit = config.context(flag, named_by="--context") if flag else None
        current = (config.context(config.current, named_by="current-context")
                   if config.current and not flag else None)
    except config_file.ConfigError as exc:
        raise CliError(str(exc), Exit.USAGE) from None
    # In order of precedence; None stands for the FERRY_* variables.
    layers: list[config_file.Context | None] = [explicit] if explicit else []
    layers.append(None)
    if current:
        layers.append(current)

    url = cafile = named = None
    insecure = False
    for context in layers:
        if context is None:
            if from_env & {"gateway_host", "gateway_port", "gateway_tls_cert",
                           "gateway_plain_http"}:
                url = _settings_url(settings)
        else:
            url, named = context.gateway, context.name
        if url:
            break
    url = url or _settings_url(settings)
    for context in layers:
        if context is None:
            if "gateway_tls_cert" in from_env:
                cafile = str(settings.gateway_tls_cert)
                break
        elif context.ca_file or context.insecure:
            cafile = _readable(context, "ca-file", config) if context.ca_file else None
            insecure = context.insecure
            break
    if cafile is None and not insecure and named is None:
        # The gateway of this machine's installation: trust its own CA.
        ca = trusted_ca(settings)
        cafile = str(ca) if ca and ca.exists() else None
    token, token_from = _token(layers, settings, from_env, config)
    return Target(url, token, token_from, cafile, insecure, named)


def _settings_url(settings: Settings) -> str:
    return f"{gateway_scheme(settings)}://{settings.gateway_host}:{settings.gateway_port}"


def _token(layers: list[config_file.Context | None], settings: Settings, from_env: set[str],
           config: config_file.Config) -> tuple[str, str]:
    for context in layers:
        if context is None:
            if "operator_token" in from_env:
                return settings.operator_token or "", "FERRY_OPERATOR_TOKEN"
            if "state_dir" in from_env and settings.operator_token_file.exists():
                return _read_token(settings.operator_token_file), str(settings.operator_token_file)
        elif context.token_file:
            path = _readable(context, "token-file", config)
            return _read_token(Path(path), context, config), path
    # Today's default: the token the gateway on this machine keeps (made on first use).
    from services.gateway.app import operator_token

    return operator_token(settings), str(settings.operator_token_file)


def _readable(context: config_file.Context, key: str, config: config_file.Config) -> str:
    path = context.token_file if key == "token-file" else context.ca_file
    assert path is not None
    if not path.is_file():
        raise CliError(str(config_file.ConfigError(
            config.path, f"{path} does not exist", context=context.name, key=key,
            line=context.lines.get(key))), Exit.USAGE)
    return str(path)


def _read_token(path: Path, context: config_file.Context | None = None,
                config: config_file.Config | None = None) -> str:
    def error(message: str) -> CliError:
        if context is None or config is None:
            return CliError(f"{path}: {message}", Exit.USAGE)
        return CliError(str(config_file.ConfigError(config.path, message, context=context.name,
                                                    key="token-file",
                                                    line=context.lines.get("token-file"))),
                        Exit.USAGE)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read the token file {path}: {exc}") from None
    if not token:
        raise error(f"the token file {path} is empty")
    return token


# -- this invocation's gateway ---------------------------------------------------------------

def target() -> Target:
    ctx = click.get_current_context(silent=True)
    flag = ctx.meta.get(CONTEXT) if ctx is not None else None
    return resolve(flag)


def gateway() -> Gateway:
    return target().gateway()


def call(method: str, path: str, body: Any = None,
         content_type: str = "application/json") -> dict:
    """The gateway's answer; its refusal or absence as the CliError that says so."""
    where = target()
    try:
        return where.gateway().call(method, path, body, content_type)
    except GatewayError as exc:
        raise failure(exc, where) from None


def failure(exc: GatewayError, where: Target | None = None) -> CliError:
    lines = [str(exc)] + [f"  {p['location']}: {p['message']}"
                          for p in exc.body.get("problems", [])]
    if exc.status in (401, 403) and where is not None:
        lines[0] += f" (the token from {where.token_from}, for {where.url})"
    return CliError("\n".join(lines), Exit.UNAVAILABLE if exc.unavailable else Exit.FAILED)
