"""The connect path's shortcuts give what the generic code they replace gave."""

from __future__ import annotations

import dataclasses

from server.auth import Identity


def test_identity_to_dict_is_asdict() -> None:
    """Identity.to_dict is written out by hand (asdict deep-copies, once per connect): it must
    name every field, and copy the lists, as asdict does."""
    identity = Identity(user="u1", name="U", guest=False, expires=5.0, namespaces=["/chat"], rooms=["a:"],
                        role="admin", issued=1.5, notice="n")
    assert identity.to_dict() == dataclasses.asdict(identity)
    assert list(identity.to_dict()) == [f.name for f in dataclasses.fields(Identity)]
    copied = identity.to_dict()
    assert copied["namespaces"] is not identity.namespaces and copied["rooms"] is not identity.rooms
    assert Identity.from_dict(copied) == identity
    guest = Identity(user="guest-abcdefgh", name="g", guest=True)
    assert guest.to_dict() == dataclasses.asdict(guest)
