"""What `ferry`'s exit status means, so that a script can tell the outcomes apart without
reading the messages."""

from __future__ import annotations

from enum import IntEnum

import click


class Exit(IntEnum):
    OK = 0
    # The command did not do what was asked: the gateway refused it (unknown group, not ready,
    # invalid plan, token refused), a check of `ferry verify` failed, a cutover rolled back.
    FAILED = 1
    # The command line or the CLI's configuration is wrong (what click itself uses for a bad
    # option): nothing was sent to the gateway.
    USAGE = 2
    # The group is halted: a VM failed and its siblings hold until `ferry retry`/`ferry resume`.
    HALTED = 3
    # What the command waited for (--timeout) did not happen in time; it may still happen.
    TIMED_OUT = 4
    # The gateway could not be reached, the connection was lost, or it said a dependency is
    # unavailable (503): worth retrying; for an action, whether it happened is not known.
    UNAVAILABLE = 5
    # Stopped with Ctrl-C while following something that goes on without the command.
    INTERRUPTED = 130


MEANINGS: dict[Exit, str] = {
    Exit.OK: "success",
    Exit.FAILED: "failure: refused by the gateway, a check failed, a cutover rolled back",
    Exit.USAGE: "usage: a bad option or argument, a bad config file or context; nothing sent",
    Exit.HALTED: "the group is halted (a VM failed; `ferry retry` or `ferry resume`)",
    Exit.TIMED_OUT: "time-out: --timeout passed before the group or run got there",
    Exit.UNAVAILABLE: "unavailable: the gateway unreachable, the connection lost, or a 503; "
                      "an action's outcome is unknown",
    Exit.INTERRUPTED: "interrupted (Ctrl-C) while following a run that goes on",
}


def epilog() -> str:
    """The exit statuses for `ferry --help` (\\b keeps click from re-flowing the lines)."""
    lines = [f"  {int(code):<4} {meaning}" for code, meaning in MEANINGS.items()]
    return "\b\nExit status:\n" + "\n".join(lines) + (
        "\n\n\bOutput: -o json (--output json) prints data as JSON on stdout; errors and "
        "progress go to stderr.\nGateway: --context NAME, else FERRY_* variables, else "
        "current-context of ~/.config/ferry/config.yaml (FERRY_CONFIG); see docs/cli.md.")


class CliError(click.ClickException):
    """An error an operator can act on: printed on stderr as `error: ...`, then exit `code`."""

    def __init__(self, message: str, code: Exit = Exit.FAILED):
        super().__init__(message)
        self.exit_code = int(code)

    def show(self, file=None) -> None:
        from rich.markup import escape

        from cli.output import err

        # soft_wrap: one error stays one line for grep, whatever the terminal's width.
        err.print(f"[bold red]error:[/bold red] {escape(self.message)}", highlight=False,
                  soft_wrap=True)
