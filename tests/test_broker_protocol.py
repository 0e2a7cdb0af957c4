"""The key broker's wire protocol on its own (no broker process): what binds a sealed answer."""

from __future__ import annotations

import os

import pytest

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import KeyAccessError
from ppml.keys.broker_protocol import EphemeralKey, release_info, seal_data_key

NONCE = bytes(range(32))


@pytest.mark.parametrize("one, other", [
    (("local", "a\0b", "1", b"w"), ("local\0a", "b", "1", b"w")),
    (("local", "k", "1\0", b"w"), ("local", "k", "1", b"\0w")),
    (("local", "k\0" + "1", "", b"w"), ("local", "k", "1", b"w")),
])
def test_release_info_differs_for_every_distinct_wrapped_key(one, other):
    """Names may contain any character (an envelope is written by anyone), so no separator can be trusted."""
    assert release_info(NONCE, WrappedKey(*one)) != release_info(NONCE, WrappedKey(*other))


def test_an_answer_opens_only_as_the_key_it_answers():
    key, ephemeral = DataKey.generate(), EphemeralKey()
    asked = WrappedKey("local", "a\0b", "1", os.urandom(40))
    swapped = WrappedKey("local\0a", "b", "1", asked.wrapped)
    sealed = seal_data_key(key, ephemeral.public_bytes, release_info(NONCE, asked))
    assert ephemeral.open(sealed, release_info(NONCE, asked), reference="r") == key
    with pytest.raises(KeyAccessError, match="does not open with this request's key"):
        ephemeral.open(sealed, release_info(NONCE, swapped), reference="r")


def test_an_answer_sealed_by_an_earlier_broker_names_the_version_as_a_cause():
    """Earlier brokers joined the names with NUL bytes; their answers cannot open, and the error says why it may be."""
    import hashlib

    key, ephemeral = DataKey.generate(), EphemeralKey()
    asked = WrappedKey("local", "k", "1", os.urandom(40))
    earlier = b"ppml-broker/v1\0release\0" + NONCE + hashlib.sha256(b"local\0k\01\0" + asked.wrapped).digest()
    sealed = seal_data_key(key, ephemeral.public_bytes, earlier)
    with pytest.raises(KeyAccessError) as caught:
        ephemeral.open(sealed, release_info(NONCE, asked), reference="r")
    assert "another ppml version" in caught.value.hint and "upgrade the broker and its clients" in caught.value.hint
