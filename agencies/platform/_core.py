"""The reference platform core: accounts, logins, restrictions and warnings in SQLite."""

from __future__ import annotations

from datetime import datetime
from functools import partial

from greenchannel.v1 import platform_pb2

from agencies._common import AgencyCore, PlatformError, Reach
from broker.protocol import Clock

from . import _orders as orders
from . import _store as store
from ._config import PlatformConfig
from ._model import Login, PlatformAccount, PlatformAccountStatus, Restriction, SentWarning
from ._schema import PLATFORM_SCHEMA

__all__ = ["PlatformCore"]


class PlatformCore(AgencyCore):
    """One internet platform's account store. Thread-safe; close it (or use it as a context manager)."""

    def __init__(self, config: PlatformConfig, *, clock: Clock | None = None) -> None:
        super().__init__(
            agency_id=config.agency_id, database=config.database, schema=PLATFORM_SCHEMA, clock=clock
        )
        self._config = config

    @property
    def config(self) -> PlatformConfig:
        return self._config

    # -- PlatformService --------------------------------------------------------------------------

    def block_account(self, request: platform_pb2.BlockAccountRequest) -> platform_pb2.BlockAccountResponse:
        """Restrict an account to a level, or lift restrictions from a level up."""
        return self._run(
            "PlatformService.BlockAccount",
            request,
            platform_pb2.BlockAccountResponse,
            partial(orders.block_account, self._config),
        )

    def lift_restriction(
        self, request: platform_pb2.LiftRestrictionRequest
    ) -> platform_pb2.LiftRestrictionResponse:
        """Restore an account an earlier request restricted (the broker's lifting order after an appeal)."""
        return self._run(
            "PlatformService.LiftRestriction",
            request,
            platform_pb2.LiftRestrictionResponse,
            orders.lift_restriction,
        )

    def warn_user(self, request: platform_pb2.WarnUserRequest) -> platform_pb2.WarnUserResponse:
        """预警劝阻: reach the user in the app (or by app call) with an approved template, now."""
        return self._run(
            "PlatformService.WarnUser",
            request,
            platform_pb2.WarnUserResponse,
            partial(orders.warn_user, self._config),
        )

    def query_platform_data(
        self, request: platform_pb2.QueryPlatformDataRequest
    ) -> platform_pb2.QueryPlatformDataResponse:
        """Registration data or login IPs in a period, in clear (the adapter seals them)."""
        return self._run(
            "PlatformService.QueryPlatformData",
            request,
            platform_pb2.QueryPlatformDataResponse,
            partial(orders.query_platform_data, self._config),
        )

    # -- the platform's own business --------------------------------------------------------------

    def register_account(
        self,
        platform: str,
        account_id: str,
        *,
        display_name: str = "",
        real_name: str = "",
        id_number: str = "",
        registered_phone: str = "",
        registered_at: datetime | None = None,
    ) -> PlatformAccount:
        """Register a (real-name verified) account on one of this platform's codes."""
        if platform not in self._config.platform_codes:
            raise PlatformError("platform code not served here")
        acct = PlatformAccount(
            platform=platform,
            account_id=account_id,
            display_name=display_name,
            real_name=real_name,
            id_number=id_number,
            registered_phone=registered_phone,
            status=PlatformAccountStatus.ACTIVE,
            restriction=Restriction.NONE,
            registered_at=registered_at or self._clock.now(),
        )
        with self._db.transaction() as conn:
            if store.account(conn, platform, account_id) is not None:
                raise PlatformError("the account is already registered")
            store.insert_account(conn, acct)
        return acct

    def deregister_account(self, platform: str, account_id: str) -> None:
        with self._db.transaction() as conn:
            if store.account(conn, platform, account_id) is None:
                raise PlatformError("no such account")
            store.set_status(conn, platform, account_id, PlatformAccountStatus.DEREGISTERED)

    def record_login(
        self, platform: str, account_id: str, ip: str, *, at: datetime, device: str = ""
    ) -> None:
        with self._db.transaction() as conn:
            if store.account(conn, platform, account_id) is None:
                raise PlatformError("no such account")
            store.insert_login(conn, platform, account_id, Login(ip=ip, at=at, device=device))

    def account(self, platform: str, account_id: str) -> PlatformAccount | None:
        with self._db.transaction() as conn:
            return store.account(conn, platform, account_id)

    def logins_of(self, platform: str, account_id: str, start: datetime, end: datetime) -> tuple[Login, ...]:
        with self._db.transaction() as conn:
            return tuple(store.logins_between(conn, platform, account_id, start, end))

    def set_reach(self, platform: str, account_id: str, reach: Reach | None) -> None:
        """Record how a warning to the account ends: UNREACHABLE (flagged), CONTINUING (the user said
        they would pay all the same), or None: reached and dissuaded."""
        with self._db.transaction() as conn:
            if store.account(conn, platform, account_id) is None:
                raise PlatformError("no such account")
            store.set_reach(conn, platform, account_id, reach)

    def reach(self, platform: str, account_id: str) -> Reach | None:
        """The platform's record of reaching the account's user (None: reached)."""
        with self._db.transaction() as conn:
            return store.reach(conn, platform, account_id)

    def warnings_to(self, platform: str, account_id: str) -> tuple[SentWarning, ...]:
        """Warnings delivered to the account, oldest first."""
        with self._db.transaction() as conn:
            return tuple(store.warnings_to(conn, platform, account_id))
