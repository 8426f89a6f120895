"""The spool: where an accepted message waits, durably, until its deliveries are done.

Its public surface is this package: the contract (SpoolInterface), what goes in and comes out
(rows, states), the texts a message shares, and the spool a config asks for. Nothing outside
gateway/spool/ imports a backend (sqlite/, pg/) or the shared machinery beneath them.
"""

from gateway.spool.backends import describe, make_spool
from gateway.spool.budget import Trip
from gateway.spool.interface import SpoolInterface
from gateway.spool.meta import with_callback_secret
from gateway.spool.packing import SharedTexts
from gateway.spool.rows import (
    Accepted,
    DayLimits,
    Delivery,
    DeliveryDetail,
    DeliveryLine,
    IncomingMessage,
    MessageDetail,
    NewDelivery,
    NewPicture,
    Overview,
    PendingBounce,
    Picture,
    Result,
    Search,
    Spend,
    SpoolStats,
    Suppressed,
)
from gateway.spool.states import SHOWN, BounceState, CallbackResult, State, StatusClass

__all__ = [
    "SHOWN",
    "Accepted",
    "BounceState",
    "CallbackResult",
    "DayLimits",
    "Delivery",
    "DeliveryDetail",
    "DeliveryLine",
    "IncomingMessage",
    "MessageDetail",
    "NewDelivery",
    "NewPicture",
    "Overview",
    "PendingBounce",
    "Picture",
    "Result",
    "Search",
    "SharedTexts",
    "Spend",
    "SpoolInterface",
    "SpoolStats",
    "State",
    "StatusClass",
    "Suppressed",
    "Trip",
    "describe",
    "make_spool",
    "with_callback_secret",
]
