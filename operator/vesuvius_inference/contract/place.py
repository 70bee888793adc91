"""A storage location as one value: a URL and the options that open it.

A URL alone does not say how to reach it: ``s3://scans/a.zarr`` on AWS and the same name on a MinIO
endpoint are different buckets, and a public bucket needs ``anon``. Handing the URL and its options
through every call as two arguments let them part company: a function that received the URL but not
its options opened the wrong bucket, or none. zarr-python v3 keeps them together the same way:
``FsspecStore.from_url(url, storage_options=...)`` (``zarr/storage/_fsspec.py``) makes one object from
a location and its options, and zarr's API passes that object around. Here the object stays a plain
record (standard library only, shared with the operator); the operations on what it names
(filesystem, Zarr store, JSON, listing, removal) are the functions of ``store/storage.py``, which take
a Place.

A command makes its places once, from its configuration (``config.Storage.place``,
``InputChoice.input_place``); everything below receives them. Places derived from one (``join``,
``at``) keep its options, which is the point: a marker's, a part's or a piece's URL under the workdir
is reached with the workdir's credentials and endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vesuvius_inference.contract.locations import Location, join, locate


@dataclass(frozen=True)
class Place:
    """``url`` (plain path, ``file://``, ``s3://``, ``gs://``, ``http(s)://``...) and the fsspec options
    that open it. The options are secret (credentials): they stay out of ``repr`` and ``str``."""

    url: str
    options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    def __str__(self) -> str:  # messages name the location, never its credentials
        return self.url

    def join(self, *parts: str) -> Place:
        """The place under this one at ``parts`` (one slash between each), reached the same way."""
        return Place(join(self.url, *parts), self.options)

    def at(self, url: str) -> Place:
        """Another URL reached with this place's options (a store URL read from a marker, a sibling)."""
        return Place(url, self.options)

    def anonymous(self) -> Place:
        """The same location read without credentials (public buckets: ``--input_anon``)."""
        return Place(self.url, {**self.options, "anon": True})

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    @property
    def local_path(self) -> str:
        """The OS path of a local place (``file://`` stripped)."""
        return self.url[len("file://"):] if self.url.startswith("file://") else self.url

    @property
    def fs_options(self) -> dict[str, Any]:
        """The options fsspec receives: none for a local path (the local filesystem takes no credentials)."""
        return {} if self.is_local else dict(self.options)

    def location(self) -> Location:
        """Where it points, spelled one way (locations.locate: the endpoint is part of an S3 location)."""
        return locate(self.url, self.options)
