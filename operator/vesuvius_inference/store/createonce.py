"""Objects created once and never overwritten: the first of two writers wins, the second learns so.

S3: PutObject with ``If-None-Match: *`` (412 PreconditionFailed, or 409 ConditionalRequestConflict
while another conditional write of the key is in flight: someone else's object exists or will).
Local and network disks: the bytes go to a temporary file, which is then hard-linked to the name;
``link`` fails with EEXIST when the name exists, atomically (the classic NFS-safe exclusive create,
unlike O_EXCL on old NFS). On NFS a link whose reply was lost is retransmitted and answers EEXIST
although it succeeded; open(2) (NOTES on O_EXCL) says to trust the temporary file's link count then,
so a count of 2 means this call created the name. Other stores have no such write: callers check
``supported`` first.
"""

from __future__ import annotations

import os

from vesuvius_inference.contract.place import Place
from vesuvius_inference.store import storage
from vesuvius_inference.store.claims import is_precondition_failure


def supported(url: str) -> bool:
    """Whether ``url`` is on a store with create-if-absent writes (local disks and S3)."""
    return storage.is_local(url) or url.startswith(("s3://", "s3a://"))


def create(place: Place, data: bytes) -> bool:
    """Create ``place`` with ``data`` unless it exists; True if this call created it."""
    if place.is_local:
        path = place.local_path
        tmp = storage.local_temp_copy(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return os.stat(tmp).st_nlink == 2  # 2: the link did land (a retransmitted NFS link)
        finally:
            os.unlink(tmp)
        return True
    if not supported(place.url):
        raise ValueError(f"{place}: this store has no create-if-absent writes")
    fs, path = storage.filesystem(place)
    bucket, _, key = path.partition("/")
    try:
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except Exception as e:  # noqa: BLE001 - only precondition failures mean "it exists"
        if is_precondition_failure(e):
            return False
        raise
    fs.invalidate_cache(path)
    return True


def read(place: Place) -> bytes | None:
    """The object's bytes, or None when it does not exist."""
    fs, path = storage.filesystem(place)
    try:
        return bytes(fs.cat_file(path))
    except FileNotFoundError:
        return None
