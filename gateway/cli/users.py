"""`fpgw central users add|list|disable|enable|passwd`: the regency dashboard's login accounts.

    add / passwd -> gateway.central.auth.hash_password -> gateway.store.accounts.AccountRepo (scrypt hash only)
    list         -> AccountRepo.accounts: names, scope, enabled, last login (never a hash)
    disable      -> AccountRepo.set_enabled: the account's open sessions end at once
A password is read from a prompt (typed twice) or, with --password-stdin, from the first line of standard input;
never from the command line, where other users could read it in the process list or the shell history.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from gateway.cli.common import CliError, config_of, open_engine

if TYPE_CHECKING:
    from gateway.store.accounts import AccountRepo

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def register(csub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `central users` and its actions to the `central` command group."""
    u = csub.add_parser("users", help="dashboard login accounts (BKD staff, office accounts)",
                        description="Accounts of the regency dashboard (the central's web pages). Every account is "
                                    "read-only: --regency accounts see every office (BKD staff), --office accounts "
                                    "see one office only (its SKPD). See docs/bkd-dashboard.md.")
    usub = u.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    q = usub.add_parser("add", help="create an account (asks for its password)")
    q.add_argument("name", help="user name, e.g. 'siti.bkd' or 'tu-dinkes'")
    scope = q.add_mutually_exclusive_group(required=True)
    scope.add_argument("--office", metavar="CODE", help="the one office this account may see")
    scope.add_argument("--regency", action="store_true", help="may see every office (BKD staff)")
    q.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    q.set_defaults(func=cmd_add, one_shot=True)
    q = usub.add_parser("list", help="the accounts: scope, enabled, last login")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_list, one_shot=True)
    q = usub.add_parser("disable", help="disable an account and end its open sessions")
    q.add_argument("name", help="the account's user name")
    q.set_defaults(func=cmd_disable, one_shot=True)
    q = usub.add_parser("enable", help="enable a disabled account again")
    q.add_argument("name", help="the account's user name")
    q.set_defaults(func=cmd_enable, one_shot=True)
    q = usub.add_parser("passwd", help="set a new password (ends the account's open sessions)")
    q.add_argument("name", help="the account's user name")
    q.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    q.set_defaults(func=cmd_passwd, one_shot=True)


def read_password(from_stdin: bool) -> str:
    """The new password: standard input's first line, or typed twice at a prompt; checked for length."""
    from gateway.central.auth import PasswordRefused, check_new_password

    if from_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CliError("the two passwords differ; nothing changed")
    try:
        check_new_password(password)
    except PasswordRefused as exc:
        raise CliError(f"password refused: {exc}") from None
    return password


@contextmanager
def _accounts(args: argparse.Namespace) -> Iterator[AccountRepo]:
    """The account store of the configured database; a refused change (AccountError) becomes a CliError."""
    from gateway.store.accounts import AccountError, AccountRepo

    engine = open_engine(config_of(args), pool_size=2, migrate=True)
    try:
        yield AccountRepo(engine)
    except AccountError as exc:
        raise CliError(str(exc)) from None
    finally:
        engine.dispose()


def cmd_add(args: argparse.Namespace) -> int:
    """Create an account."""
    from gateway.central.auth import hash_password

    if not _USERNAME.match(args.name):
        raise CliError("user name: 1-64 letters, digits, '_', '.', '@' or '-'")
    if args.office is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,32}", args.office):
        raise CliError("--office: an office code like 1801.01 (letters, digits, '.', '_', ':', '-')")
    password = read_password(args.password_stdin)
    with _accounts(args) as repo:
        repo.add(args.name, hash_password(password), None if args.regency else args.office)
    print(f"account {args.name!r} added: sees {'every office' if args.regency else 'office ' + args.office}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """List the accounts."""
    with _accounts(args) as repo:
        rows = repo.accounts()
    items = [{"name": a.username, "office": a.office_code, "enabled": a.enabled,
              "created_at": a.created_at.isoformat(timespec="seconds"),
              "last_login_at": a.last_login_at.isoformat(timespec="seconds") if a.last_login_at else None}
             for a in rows]
    if args.json:
        print(json.dumps(items))
        return 0
    if not items:
        print("no dashboard accounts yet: fpgw central users add NAME --regency | --office CODE")
        return 0
    for i in items:
        print(f"{i['name']:<24} {i['office'] or '* (regency)':<16} {'enabled' if i['enabled'] else 'DISABLED':<9} "
              f"last login {i['last_login_at'] or '-'}")
    return 0


def _set(args: argparse.Namespace, enabled: bool) -> int:
    with _accounts(args) as repo:
        repo.set_enabled(args.name, enabled)
    print(f"account {args.name!r} {'enabled' if enabled else 'disabled; its open sessions ended'}")
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    """Disable an account."""
    return _set(args, False)


def cmd_enable(args: argparse.Namespace) -> int:
    """Enable an account."""
    return _set(args, True)


def cmd_passwd(args: argparse.Namespace) -> int:
    """Set a new password."""
    from gateway.central.auth import hash_password

    password = read_password(args.password_stdin)
    with _accounts(args) as repo:
        repo.set_password(args.name, hash_password(password))
    print(f"password of {args.name!r} changed; its open sessions ended")
    return 0
