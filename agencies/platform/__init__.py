"""A reference internet-platform account store implementing ``greenchannel.v1.PlatformService``."""

from ._config import PlatformConfig
from ._core import PlatformCore
from ._model import (
    Login,
    PlatformAccount,
    PlatformAccountStatus,
    Restriction,
    SentWarning,
    restricted_features,
)
from ._servicer import PLATFORM_SERVICE, PlatformServicer

__all__ = [
    "PLATFORM_SERVICE",
    "Login",
    "PlatformAccount",
    "PlatformAccountStatus",
    "PlatformConfig",
    "PlatformCore",
    "PlatformServicer",
    "Restriction",
    "SentWarning",
    "restricted_features",
]
