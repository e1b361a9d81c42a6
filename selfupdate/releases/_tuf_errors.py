"""python-tuf's verification errors as ours: the one place they are converted, by their type
(pure; :mod:`selfupdate.releases.client` works out the role and the facts it needs)."""

from __future__ import annotations

from tuf.api import exceptions as tuf_exc
from tuf.api.serialization import DeserializationError

from selfupdate import errors

__all__ = ["metadata_error"]


def metadata_error(
    e: tuf_exc.RepositoryError,
    role: str,
    *,
    lowered: bool = False,
    listed: bool = True,
    expires: str = "",
    foreign: bool = False,
    url: str = "",
) -> errors.MetadataError:
    """The one place where python-tuf's verification errors become ours, by their type (pure).

    Args:
        e: what ngclient raised.
        role: the top-level role being verified when it did.
        lowered: the new snapshot drops a file the trusted snapshot lists, or lists it at a
            lower version (tuf raises ``BadVersionNumberError`` or a plain ``RepositoryError``
            for that and for other failures alike).
        listed: the trusted snapshot lists ``targets.json`` (tuf raises a plain
            ``RepositoryError`` when it does not, and when a file holds another role).
        expires: the expiry date of ``role``, for the message.
        foreign: on the first fetch, ``role``'s file is signed only by keys the embedded root
            does not know (the URL likely points to another repository).
        url: the repository URL, for the message.
    """
    detail = _short(str(e).rstrip(".")) or type(e).__name__
    if isinstance(e, tuf_exc.ExpiredMetadataError):
        return errors.ExpiredMetadataError(role, expires)
    if isinstance(e, tuf_exc.UnsignedMetadataError):
        return errors.SignatureError(role, foreign=foreign, url=url)
    if isinstance(e, tuf_exc.LengthOrHashMismatchError):
        return errors.InconsistentMetadataError(role, detail)
    if isinstance(e, DeserializationError):
        return errors.MalformedMetadataError(role, detail)
    if isinstance(e, tuf_exc.BadVersionNumberError):
        # timestamp: its own or its snapshot's version went down (spec 5.4.3, 5.4.4). snapshot:
        # a listed file's version went down (5.5.5), else the snapshot is not the version the
        # timestamp names (5.5.4). root and targets: the file is not the version its name or
        # the snapshot says (5.3.5, 5.6.3): files that do not belong together.
        if role == "timestamp" or lowered:
            return errors.RollbackError(role, detail)
        return errors.InconsistentMetadataError(role, detail)
    if type(e) is tuf_exc.RepositoryError:
        if lowered:  # the new snapshot dropped a file (5.5.5)
            return errors.RollbackError(role, detail)
        if role == "targets" and not listed:  # the snapshot does not list targets (5.6.1)
            return errors.InconsistentMetadataError(role, detail)
    return errors.MalformedMetadataError(role, detail)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 160 else text[:157] + "..."
