"""client.interception.proven_keys on real certificates (trustme CAs, intermediates, foreign CAs).

A declared interceptor must match only keys that provably signed the leaf's chain,
never a CA certificate that a server merely appended to what it presented.
"""

from __future__ import annotations

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from client.interception import proven_keys
from notary.core import spki_sha256


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def chain_of(leaf: trustme.LeafCert) -> list[bytes]:
    return [der(b.bytes()) for b in leaf.cert_chain_pems]


def test_leaf_and_its_issuer_are_proven() -> None:
    ca = trustme.CA(organization_name="Corp proxy CA")
    leaf = ca.issue_cert("site.example")
    ca_der = der(ca.cert_pem.bytes())
    chain = chain_of(leaf)
    assert proven_keys(chain) == (spki_sha256(chain[0]),)  # trustme serves the leaf only
    # The presented chain includes the CA: its signature on the leaf verifies.
    assert proven_keys([chain[0], ca_der]) == (spki_sha256(chain[0]), spki_sha256(ca_der))
    # The CA given by the user instead of by the server: the same.
    assert proven_keys(chain, [ca_der]) == (spki_sha256(chain[0]), spki_sha256(ca_der))


def test_appended_foreign_ca_is_not_proven() -> None:
    corp = trustme.CA(organization_name="Corp proxy CA")
    attacker = trustme.CA(organization_name="Attacker CA")
    leaf = attacker.issue_cert("site.example")
    corp_der = der(corp.cert_pem.bytes())
    chain = chain_of(leaf)
    # The attacker pads its chain with the corporate CA certificate: not proven.
    assert spki_sha256(corp_der) not in proven_keys([chain[0], corp_der])
    assert spki_sha256(corp_der) not in proven_keys(chain, [corp_der])


def test_intermediate_path_is_walked() -> None:
    root = trustme.CA(organization_name="Corp root")
    inter = root.create_child_ca()
    leaf = inter.issue_cert("site.example")
    chain = chain_of(leaf)  # leaf, intermediate
    root_der = der(root.cert_pem.bytes())
    assert len(chain) == 2
    keys = proven_keys(chain, [root_der])
    assert keys == (spki_sha256(chain[0]), spki_sha256(chain[1]), spki_sha256(root_der))
    # Out of order and with junk in between: still walked by signature, junk ignored.
    junk = der(trustme.CA().cert_pem.bytes())
    assert proven_keys([chain[0], junk, chain[1]]) == (spki_sha256(chain[0]), spki_sha256(chain[1]))


def test_garbage_is_not_an_error() -> None:
    assert proven_keys([]) == ()
    assert proven_keys([b"not a certificate"]) == ()
    ca = trustme.CA()
    leaf = chain_of(ca.issue_cert("a.example"))[0]
    assert proven_keys([leaf, b"junk"], [b"junk"]) == (spki_sha256(leaf),)


async def test_supplied_certificate_is_matched_against_a_declared_ca() -> None:
    """verify_with_notaries(observed=cert, expect_interceptor=[CA]) with no notaries: the match is stated."""
    from client.api import verify_with_notaries
    from client.bundle import Bundle

    corp = trustme.CA(organization_name="Corp proxy CA")
    leaf_pem = corp.issue_cert("site.example").cert_chain_pems[0].bytes()
    v = await verify_with_notaries("site.example", bundle=Bundle(()), observed=leaf_pem,
                                   expect_interceptor=[corp.cert_pem.bytes()])
    assert v.status == "insufficient" and v.interception is not None
    assert v.interception.matched == v.interception.expected[0]
    assert "declared interceptor" in v.summary
    other = await verify_with_notaries("site.example", bundle=Bundle(()), observed=leaf_pem,
                                       expect_interceptor=[trustme.CA().cert_pem.bytes()])
    assert other.interception is not None and other.interception.matched is None
