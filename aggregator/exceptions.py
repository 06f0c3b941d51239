"""The one exception tree of aggregator.

    AggregatorError
    ├── ConfigError          the configuration file is missing or invalid
    ├── StorageError         the SQLite store cannot be opened, migrated or written
    └── FeedError(url)       something went wrong with one feed
        ├── FetchError       network, HTTP status, refused address
        │   ├── RefusedAddressError   the address is private, loopback or link-local
        │   └── TooLargeError         the body is over the size cap
        └── ParseError       the response is not a feed

Lower-level errors are wrapped at the edge with ``raise ... from e``.
"""

from __future__ import annotations


class AggregatorError(Exception):
    """Base class of every error aggregator raises on purpose."""


class ConfigError(AggregatorError):
    """The configuration is unusable; the message names file, key and feed."""


class StorageError(AggregatorError):
    """The SQLite store cannot be used."""


class FeedError(AggregatorError):
    """An error tied to one feed (or page) URL."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(message)
        self.url = url
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        return (self.__class__, (self.url, self.message))


class FetchError(FeedError):
    """The resource could not be fetched."""

    def __init__(
        self, url: str, message: str, *, status: int | None = None, retry_after: str | None = None
    ) -> None:
        super().__init__(url, message)
        self.status = status
        self.retry_after = retry_after


class RefusedAddressError(FetchError):
    """The resource resolves to an address that fetching is not allowed to reach."""


class TooLargeError(FetchError):
    """The response body is larger than the cap allows."""


class ParseError(FeedError):
    """The response could not be read as a feed."""
