"""`ferry token` (named operator tokens with a role: admin only) and `ferry audit` (who did
what, when)."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import click
from rich.table import Table

from cli.exits import CliError, Exit
from cli.output import emit, err, json_wanted, out, output_option, say
from cli.session import call, context_option
from shared.roles import BOOTSTRAP, NAME, ROLES


@click.group()
def token() -> None:
    """Named operator tokens, each with a role (viewer < operator < admin); an admin's."""


@token.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True,
              help="viewer: reads; operator: and submit, retry, resume, verify, cutover; "
                   "admin: and everything (tokens, replay, cancel, finalize, prune).")
@output_option
@context_option
def create(name: str, role: str) -> None:
    """Make a token NAME with a role; prints the token this once (it is stored hashed)."""
    if not NAME.fullmatch(name) or name == BOOTSTRAP:
        raise CliError(f"token name {name!r}: use lowercase letters, digits, '.', '_' and '-' "
                       f"(at most 63, starting with a letter or digit), not {BOOTSTRAP!r}",
                       Exit.USAGE)
    answer = call("POST", "/v1/tokens", {"name": name, "role": role})
    if json_wanted():
        emit(answer)
        return
    # The note on stderr, the token alone on stdout: `TOKEN=$(ferry token create ...)` works.
    err.print(f"token {answer['name']} ({answer['role']}) made; it is shown this once, keep "
              "it now:", highlight=False, markup=False)
    out.print(answer["token"], highlight=False, markup=False, soft_wrap=True)


@token.command("list")
@output_option
@context_option
def list_tokens() -> None:
    """The named tokens (never the tokens themselves), revoked ones included."""
    answer = call("GET", "/v1/tokens")
    if json_wanted():
        emit(answer)
        return
    table = Table(title="operator tokens")
    for column in ("name", "role", "created", "by", "last used", "revoked"):
        table.add_column(column)
    for t in answer["tokens"]:
        table.add_row(t["name"], t["role"], t["created_at"][:19], t["created_by"],
                      (t.get("last_used_at") or "")[:19], (t.get("revoked_at") or "")[:19])
    out.print(table)


@token.command("revoke")
@click.argument("name")
@output_option
@context_option
def revoke(name: str) -> None:
    """Revoke token NAME: the gateway refuses it from its next request on."""
    answer = call("DELETE", f"/v1/tokens/{quote(name, safe='')}")
    if json_wanted():
        emit(answer)
    else:
        say(f"token {answer['name']} revoked at {answer['revoked_at'][:19]}")


@click.command()
@click.argument("group", required=False)
@click.option("--limit", type=click.IntRange(1, 500), default=None,
              help="At most this many lines (the gateway's default: 50).")
@click.option("--cursor", default=None, help="Start at this page (the cursor printed under "
              "the page before).")
@output_option
@context_option
def audit(group: str | None, limit: int | None, cursor: str | None) -> None:
    """Who did what and when, newest first: every action of an operator token (and every
    one refused by role), of GROUP or of all."""
    query = [(k, v) for k, v in (("group", group), ("limit", limit), ("cursor", cursor))
             if v is not None]
    answer = call("GET", "/v1/audit" + (f"?{urlencode(query)}" if query else ""))
    if json_wanted():
        emit(answer)
        return
    table = Table(title=f"audit of {group}" if group else "audit")
    columns = ["at", "token (role)", "action", "status", "detail"]
    if not group:
        columns.insert(3, "group")
    for column in columns:
        table.add_column(column, overflow="fold")
    for line in answer["lines"]:
        cells = [line["at"][:19].replace("T", " "), f"{line['actor']} ({line['role']})",
                 f"{line['method']} {line['path']}", str(line["status"]),
                 line.get("detail") or ""]
        if not group:
            cells.insert(3, line.get("group") or "")
        table.add_row(*cells)
    out.print(table)
    if answer.get("next_cursor"):
        say(f"more: ferry audit {group + ' ' if group else ''}--cursor {answer['next_cursor']}")
