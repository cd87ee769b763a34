"""Dashboard accounts and their sessions at the central (tables of migration 0010_dashboard_accounts).

    `fpgw central users add|list|disable|passwd` --> AccountRepo (hashes made by gateway.central.auth)
    gateway.central.dashboard login --> AccountRepo.account / open_session; every page --> AccountRepo.session
Only hashes are stored: the password as scrypt, the session id as SHA-256. Disabling an account or changing its
password deletes its sessions in the same transaction, so it takes effect on the next request.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, delete, select, update

from gateway.store import schema as s
from gateway.store.db import writer
from gateway.store.schema import utcnow


class AccountError(Exception):
    """An account action cannot be done (unknown or duplicate user name); the message says which."""


@dataclass(frozen=True)
class Account:
    """One dashboard account; ``office_code`` None = regency-wide (BKD staff)."""

    id: int
    username: str
    password_hash: str
    office_code: str | None
    enabled: bool
    created_at: datetime
    last_login_at: datetime | None

    @property
    def offices(self) -> frozenset[str] | None:
        """The account's scope as the API's tokens give it (None = every office)."""
        return None if self.office_code is None else frozenset({self.office_code})


def _account(r: object) -> Account:
    m = r._mapping  # type: ignore[attr-defined]
    return Account(m["id"], m["username"], m["password_hash"], m["office_code"], bool(m["enabled"]), m["created_at"],
                   m["last_login_at"])


_COLUMNS = (s.dashboard_accounts.c.id, s.dashboard_accounts.c.username, s.dashboard_accounts.c.password_hash,
            s.dashboard_accounts.c.office_code, s.dashboard_accounts.c.enabled, s.dashboard_accounts.c.created_at,
            s.dashboard_accounts.c.last_login_at)


class AccountRepo:
    """Accounts and sessions over one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = writer(engine)

    # -- accounts --------------------------------------------------------------------------------
    def add(self, username: str, password_hash: str, office_code: str | None) -> Account:
        """Create an enabled account (AccountError when the name is taken)."""
        now = utcnow()
        a = s.dashboard_accounts.c
        with self._writer.begin() as conn:
            if conn.execute(select(a.id).where(a.username == username)).first() is not None:
                raise AccountError(f"an account named {username!r} already exists")
            conn.execute(s.dashboard_accounts.insert().values(
                username=username, password_hash=password_hash, office_code=office_code, enabled=True,
                created_at=now, updated_at=now))
        found = self.account(username)
        assert found is not None
        return found

    def account(self, username: str) -> Account | None:
        """The account with this user name (enabled or not), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(*_COLUMNS).where(s.dashboard_accounts.c.username == username)).first()
        return _account(row) if row else None

    def accounts(self) -> list[Account]:
        """Every account, by user name."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(*_COLUMNS).order_by(s.dashboard_accounts.c.username)).all()
        return [_account(r) for r in rows]

    def _change(self, username: str, **values: object) -> None:
        a = s.dashboard_accounts.c
        with self._writer.begin() as conn:
            pk = conn.execute(select(a.id).where(a.username == username)).scalar()
            if pk is None:
                raise AccountError(f"no account named {username!r} (see `fpgw central users list`)")
            conn.execute(update(s.dashboard_accounts).where(a.id == pk).values(updated_at=utcnow(), **values))
            # Whatever changed (disabled, new password), the open logins end now.
            conn.execute(delete(s.dashboard_sessions).where(s.dashboard_sessions.c.account_id == pk))

    def set_enabled(self, username: str, enabled: bool) -> None:
        """Enable or disable an account; its sessions end either way."""
        self._change(username, enabled=enabled)

    def set_password(self, username: str, password_hash: str) -> None:
        """Store a new password hash; the account's sessions end."""
        self._change(username, password_hash=password_hash)

    # -- sessions --------------------------------------------------------------------------------
    def open_session(self, account_id: int, token_hash: str, csrf: str, expires_at: datetime) -> None:
        """Record a login (and the account's last login time); expired sessions are pruned on the way."""
        now = utcnow()
        with self._writer.begin() as conn:
            conn.execute(delete(s.dashboard_sessions).where(s.dashboard_sessions.c.expires_at < now))
            conn.execute(s.dashboard_sessions.insert().values(
                token_hash=token_hash, account_id=account_id, csrf=csrf, created_at=now, expires_at=expires_at))
            conn.execute(update(s.dashboard_accounts).where(s.dashboard_accounts.c.id == account_id)
                         .values(last_login_at=now))

    def session(self, token_hash: str, now: datetime | None = None) -> tuple[Account, str] | None:
        """(account, csrf token) of a live session of an enabled account, or None."""
        now = now or utcnow()
        ss = s.dashboard_sessions.c
        with self.engine.connect() as conn:
            row = conn.execute(select(*_COLUMNS, ss.csrf)
                               .select_from(s.dashboard_sessions.join(
                                   s.dashboard_accounts, s.dashboard_accounts.c.id == ss.account_id))
                               .where(ss.token_hash == token_hash, ss.expires_at > now,
                                      s.dashboard_accounts.c.enabled.is_(True))).first()
        return (_account(row), row._mapping["csrf"]) if row else None

    def close_session(self, token_hash: str) -> None:
        """Forget a session (logout)."""
        with self._writer.begin() as conn:
            conn.execute(delete(s.dashboard_sessions).where(s.dashboard_sessions.c.token_hash == token_hash))
