"""Working days as data: which days count for a deadline given in working days (``"3wd"``).

A jurisdiction's calendar (the SLA policy's ``[calendar]``) names its weekend days, its public
holidays and its make-up working days (调休: a weekend day worked in exchange for a longer holiday),
and the time zone its days are kept in.

The rule for N working days from a receipt: the deadline is when N whole working days' worth of
time has passed on working days only, in the calendar's zone. Received during a working day, that
is the same time of day on the N-th working day after it (Friday 10:00 + 1wd = Monday 10:00).
Received on a weekend day or a holiday, counting starts at 00:00 of the next working day, and the
deadline is the end (24:00) of the N-th working day counted from that one (Saturday + 3wd = the
end of Wednesday, i.e. Thursday 00:00, even when that Thursday is a holiday).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["WEEKDAYS", "WorkingCalendar", "WorkingDays"]

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
"""Day names in ISO order: ``WEEKDAYS[d.isoweekday() - 1]``."""

_DAY = timedelta(days=1)
# Ten years of days without a working one is a broken calendar, not a long holiday.
_SEARCH = 3660


@dataclass(frozen=True, kw_only=True)
class WorkingDays:
    """A phase budget counted in working days of the policy's calendar (``"3wd"``)."""

    count: int
    """How many working days; >= 1."""

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("a number of working days must be 1 or more")

    @property
    def nominal(self) -> timedelta:
        """The shortest it can be: one day per working day (scaled test policies use this)."""
        return self.count * _DAY

    def __str__(self) -> str:
        return f"{self.count}wd"


@dataclass(frozen=True, kw_only=True)
class WorkingCalendar:
    """Which days are working days, and in which time zone days begin and end."""

    time_zone: str = "UTC"
    """IANA time zone name the days are kept in, e.g. ``Asia/Shanghai``."""
    weekend: frozenset[int] = frozenset({6, 7})
    """ISO weekdays (1 = Monday .. 7 = Sunday) that are not working days unless a make-up day."""
    holidays: frozenset[date] = frozenset()
    """Public holidays: not working days, whatever weekday they fall on."""
    make_up_days: frozenset[date] = frozenset()
    """Weekend days that are working days (调休)."""
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            zone = ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {self.time_zone!r}: give an IANA name such as 'Asia/Shanghai' or 'UTC'"
            ) from None
        object.__setattr__(self, "_zone", zone)
        if not self.weekend <= frozenset(range(1, 8)):
            raise ValueError("weekend days are ISO weekdays, 1 (Monday) to 7 (Sunday)")
        if len(self.weekend) == 7:
            raise ValueError("a weekend of all seven days leaves no working day")
        both = self.holidays & self.make_up_days
        if both:
            raise ValueError(f"{min(both).isoformat()} is both a holiday and a make-up working day")
        ordinary = sorted(day for day in self.make_up_days if day.isoweekday() not in self.weekend)
        if ordinary:
            raise ValueError(
                f"make-up day {ordinary[0].isoformat()} is not a weekend day; it is a working day anyway"
            )

    def is_working_day(self, day: date) -> bool:
        """Whether ``day`` (a date in the calendar's zone) is a working day."""
        if day in self.make_up_days:
            return True
        return day not in self.holidays and day.isoweekday() not in self.weekend

    def add_working_days(self, start: datetime, count: int) -> datetime:
        """The instant ``count`` working days after ``start`` by the module's rule, in UTC."""
        if start.utcoffset() is None:
            raise ValueError("start must be timezone-aware")
        if count < 1:
            raise ValueError("count must be 1 or more")
        local = start.astimezone(self._zone)
        day, time_of_day = local.date(), local.time()
        if not self.is_working_day(day):
            day, time_of_day = self._next_working_day(day), time(0)
        if time_of_day == time(0):
            # At the very start of a working day: the end of the count-th working day from this one.
            for _ in range(count - 1):
                day = self._next_working_day(day)
            due_day = day + _DAY
        else:
            for _ in range(count):
                day = self._next_working_day(day)
            due_day = day
        return datetime.combine(due_day, time_of_day, tzinfo=self._zone).astimezone(UTC)

    def _next_working_day(self, day: date) -> date:
        for _ in range(_SEARCH):
            day += _DAY
            if self.is_working_day(day):
                return day
        raise ValueError(f"no working day within {_SEARCH} days after {day.isoformat()}")
