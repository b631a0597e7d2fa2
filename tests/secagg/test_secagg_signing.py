"""Signed statements and the key directory: what binds a signature to its round."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privfl.errors import ConfigError
from privfl.secagg import KeyDirectory, ProtocolError, SecAggConfig, trusted_setup
from privfl.secagg.signing import statement, verify_key


def test_statements_differ_in_every_field():
    base = ("keys", b"s", 1, 2, b"ab", b"c")
    variants = [
        ("input", b"s", 1, 2, b"ab", b"c"),
        ("keys", b"t", 1, 2, b"ab", b"c"),
        ("keys", b"s", 2, 2, b"ab", b"c"),
        ("keys", b"s", 1, 3, b"ab", b"c"),
        ("keys", b"s", 1, 2, b"a", b"bc"),  # the same bytes, split otherwise
    ]
    signed = {statement(*base)} | {statement(*v) for v in variants}
    assert len(signed) == 1 + len(variants)


def test_a_signature_verifies_only_for_its_signer_and_statement():
    keys, directory = trusted_setup([0, 1])
    signed = statement("survivors", b"s", 3, 0, b"ids")
    signature = keys[0].sign(signed)
    directory.verify(0, signature, signed, "the set")
    with pytest.raises(ProtocolError, match="client 1's signature on the set does not verify"):
        directory.verify(1, signature, signed, "the set")
    with pytest.raises(ProtocolError, match="client 0's signature on the set does not verify"):
        directory.verify(0, signature, statement("survivors", b"s", 4, 0, b"ids"), "the set")


def test_a_registered_directory_knows_only_its_keys():
    _, directory = trusted_setup([0])
    stranger = verify_key(Ed25519PrivateKey.generate())
    with pytest.raises(ProtocolError, match="client 5 has no registered signing key"):
        directory.key_of(5, stranger)
    with pytest.raises(ProtocolError, match="client 0 presents another signing key"):
        directory.key_of(0, stranger)


def test_trust_on_first_use_pins_the_first_key():
    directory = KeyDirectory(first_use=True)
    first, second = (verify_key(Ed25519PrivateKey.generate()) for _ in range(2))
    with pytest.raises(ProtocolError, match="client 3 has no registered signing key"):
        directory.key_of(3)
    assert directory.key_of(3, first) == first
    assert directory.key_of(3) == first
    with pytest.raises(ProtocolError, match="client 3 presents another signing key"):
        directory.key_of(3, second)


@pytest.mark.parametrize(
    ("n", "t", "corrupted", "quorum"), [(10, 8, 1, 8), (40, 6, 4, 23), (40, 6, 0, 21), (3, 1, 0, 2)]
)
def test_the_quorum_is_a_majority_beyond_the_corrupted_or_t(n, t, corrupted, quorum):
    assert SecAggConfig(n, t, corrupted=corrupted).quorum == quorum


@pytest.mark.parametrize(
    ("field", "value"), [("session", b"x" * 65), ("round", -1), ("corrupted", 10)]
)
def test_session_round_and_corrupted_are_checked(field, value):
    with pytest.raises(ConfigError, match=field):
        SecAggConfig(10, 3, **{field: value})
