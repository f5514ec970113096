"""Protocol 2 freshness: Merkle trees (RFC 9162 hashing), statements, answers and the batching signer.

Expected hashes are computed here with hashlib directly, not with notary.core.merkle.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notary.core import (
    FRESHNESS_TYPE,
    ProbeResult,
    SigningKey,
    Statement,
    Target,
    leaf_bytes,
    open_answer,
    stamp_batch,
    verify_answer,
)
from notary.core import merkle
from notary.errors import SignatureError, VerificationError
from notary.signer import FreshnessBatcher, sign_round

KEY = SigningKey(bytes(range(32)))


def H(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# -- Merkle ------------------------------------------------------------------------------------


def test_small_trees_by_hand() -> None:
    a, b, c = (H(b"\x00" + x) for x in (b"a", b"b", b"c"))
    assert merkle.leaf_hash(b"a") == a
    assert merkle.root_hash([a]) == a
    assert merkle.root_hash([a, b]) == H(b"\x01" + a + b)
    assert merkle.root_hash([a, b, c]) == H(b"\x01" + H(b"\x01" + a + b) + c)
    assert merkle.inclusion_path([a, b, c], 2) == [H(b"\x01" + a + b)]
    assert merkle.inclusion_path([a, b, c], 0) == [b, c]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 70), seed=st.binary(min_size=1, max_size=8))
def test_every_leaf_proves_the_root_and_nothing_else(n: int, seed: bytes) -> None:
    leaves = [merkle.leaf_hash(seed + i.to_bytes(2, "big")) for i in range(n)]
    root, paths = merkle.tree_paths(leaves)
    assert root == merkle.root_hash(leaves)
    for i in range(n):
        assert paths[i] == merkle.inclusion_path(leaves, i)
        assert merkle.root_from_path(i, n, leaves[i], paths[i]) == root
        other = (i + 1) % n
        if other != i and leaves[other] != leaves[i]:
            assert merkle.root_from_path(other, n, leaves[i], paths[i]) != root
        if paths[i]:
            assert merkle.root_from_path(i, n, leaves[i], paths[i][:-1]) != root
            assert merkle.root_from_path(i, n, leaves[i], paths[i] + [leaves[0]]) is None


def test_root_from_path_refuses_impossible_shapes() -> None:
    h = merkle.leaf_hash(b"x")
    assert merkle.root_from_path(0, 0, h, []) is None
    assert merkle.root_from_path(1, 1, h, []) is None
    assert merkle.root_from_path(-1, 2, h, [h]) is None
    assert merkle.root_from_path(0, 2, h, [b"short"]) is None
    assert merkle.root_from_path(0, merkle.MAX_TREE_SIZE + 1, h, [h]) is None


# -- statements and answers ----------------------------------------------------------------------


def _obs_round() -> Any:
    probe = ProbeResult.failure(Target("192.0.2.7", 443, None), "192.0.2.7", 1000, "timeout", "connect timed out")
    return sign_round([probe], KEY, ())


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13])
def test_each_answer_of_a_batch_verifies_under_its_own_nonce(size: int) -> None:
    rnd = _obs_round()
    nonces = [f"nonce-of-request-{i:04d}" for i in range(size)]
    proofs = stamp_batch(KEY, 1010, [leaf_bytes(n, rnd.digests, "cached") for n in nonces])
    assert len({json.dumps(p["statement"], sort_keys=True) for p in proofs}) == 1  # one signature
    for i, (n, p) in enumerate(zip(nonces, proofs)):
        [obs] = verify_answer(rnd.envelopes, p, KEY.verify_key, nonce=n)
        assert (obs.nonce, obs.signed_at, obs.source, obs.age) == (n, 1010, "cached", 10)
        assert p["index"] == i
        if size > 1:
            with pytest.raises(VerificationError):
                verify_answer(rnd.envelopes, p, KEY.verify_key, nonce=nonces[(i + 1) % size])


def test_open_answer_reports_the_leaf_nonce_but_checks_everything_else() -> None:
    rnd = _obs_round()
    [proof] = stamp_batch(KEY, 1010, [leaf_bytes("a-recorded-nonce-0001", rnd.digests, "fresh")])
    assert open_answer(rnd.envelopes, proof, KEY.verify_key)[0].nonce == "a-recorded-nonce-0001"
    proof["path"] = ["00" * 32]
    with pytest.raises(SignatureError):
        open_answer(rnd.envelopes, proof, KEY.verify_key)


STATEMENT = Statement(KEY.key_id, 5, 2, "ab" * 32).to_payload()


@pytest.mark.parametrize("change", [
    {"signed_at": True}, {"signed_at": 5.0}, {"signed_at": None}, {"tree_size": 0}, {"tree_size": True},
    {"tree_size": merkle.MAX_TREE_SIZE + 1}, {"root": "AB" * 32}, {"root": "ab" * 31}, {"root": 7}, {"notary": 1},
])
def test_statement_shape_is_strict(change: dict[str, Any]) -> None:
    with pytest.raises(VerificationError, match="malformed freshness statement"):
        Statement.from_payload(STATEMENT | change)
    with pytest.raises(VerificationError):
        Statement.from_payload({k: v for k, v in STATEMENT.items() if k != "root"})
    assert Statement.from_payload(STATEMENT).tree_size == 2


def test_statement_is_a_dsse_envelope_of_the_freshness_type() -> None:
    rnd = _obs_round()
    [proof] = stamp_batch(KEY, 1010, [leaf_bytes("n" * 20, rnd.digests, "fresh")])
    env = proof["statement"]
    assert env["payloadType"] == FRESHNESS_TYPE
    payload = json.loads(base64.b64decode(env["payload"]))
    leaf = base64.b64decode(proof["leaf"])
    assert payload["root"] == H(b"\x00" + leaf).hex() and payload["tree_size"] == 1


# -- the batching signer ------------------------------------------------------------------------


async def test_requests_of_one_turn_share_one_statement() -> None:
    batcher = FreshnessBatcher(KEY, lambda: 1234)
    rnd = _obs_round()
    nonces = [f"concurrent-nonce-{i:04d}" for i in range(20)]
    proofs = await asyncio.gather(*(batcher.stamp(n, rnd.digests, "cached") for n in nonces))
    assert batcher.statements == 1 and batcher.leaves == 20
    for n, p in zip(nonces, proofs):
        verify_answer(rnd.envelopes, p, KEY.verify_key, nonce=n)
    # A later turn is a new batch.
    await batcher.stamp("a-later-nonce-0000001", rnd.digests, "cached")
    assert batcher.statements == 2


async def test_a_full_turn_is_split_into_batches_of_max_batch() -> None:
    batcher = FreshnessBatcher(KEY, lambda: 1234, max_batch=4)
    rnd = _obs_round()
    proofs = await asyncio.gather(*(batcher.stamp(f"split-nonce-{i:08d}", rnd.digests, "fresh") for i in range(10)))
    assert batcher.statements == 3
    assert max(p["index"] for p in proofs) == 3


async def test_a_signing_failure_reaches_every_waiter() -> None:
    def broken_clock() -> int:
        raise RuntimeError("clock exploded")

    batcher = FreshnessBatcher(KEY, broken_clock)
    rnd = _obs_round()
    got = await asyncio.gather(*(batcher.stamp(f"failing-nonce-{i:06d}", rnd.digests, "fresh") for i in range(3)),
                               return_exceptions=True)
    assert all(isinstance(g, RuntimeError) for g in got)
    # The batcher keeps working afterwards.
    batcher.clock = lambda: 1
    await batcher.stamp("working-again-nonce-01", rnd.digests, "fresh")


@settings(max_examples=200, deadline=None)
@given(nonce=st.text(min_size=0, max_size=40) | st.from_regex(r"[A-Za-z0-9_-]{16,128}", fullmatch=True),
       digests=st.lists(st.binary(min_size=32, max_size=32).map(bytes.hex) | st.text(max_size=70), min_size=1, max_size=4),
       source=st.sampled_from(["fresh", "cached"]))
def test_leaf_fast_path_is_byte_identical_to_rfc8785(nonce: str, digests: list[str], source: str) -> None:
    from notary.core import canonical_encode
    from notary.errors import EncodingError

    try:
        expected = canonical_encode({"nonce": nonce, "observations": digests, "source": source})
    except EncodingError:  # e.g. a lone surrogate: not encodable, and the fast path does not apply
        with pytest.raises(EncodingError):
            leaf_bytes(nonce, digests, source)
        return
    assert leaf_bytes(nonce, digests, source) == expected


def test_leaf_fast_path_does_not_take_two_digests_for_one() -> None:
    """Review of the speed pass: one item holding '","' between two hex digests passed the
    fast path's joined regex, and the leaf named two observations for one input item."""
    a, b = "a" * 64, "b" * 64
    spliced = f'{a}","{b}'
    got = leaf_bytes("n" * 22, [spliced], "fresh")
    assert got == canonical_encode_leaf("n" * 22, [spliced], "fresh")
    assert json.loads(got)["observations"] == [spliced]  # one item, as given


def canonical_encode_leaf(nonce: str, digests: list[str], source: str) -> bytes:
    from notary.core import canonical_encode

    return canonical_encode({"nonce": nonce, "observations": digests, "source": source})


async def test_the_spliced_json_of_an_answer_is_the_json_of_its_object() -> None:
    """The notary writes answers by splicing pre-serialised text; it must parse to the answer object."""
    from notary.signer import Answer

    batcher = FreshnessBatcher(KEY, lambda: 1234)
    rnd = _obs_round()
    got = await asyncio.gather(*(batcher.stamp_with_json(f"splice-nonce-{i:06d}", rnd.digests, "cached")
                                 for i in range(5)))
    for proof, text in got:
        assert json.loads(text) == proof
        answer = Answer(rnd, proof, text)
        assert json.loads("{" + answer.json_members() + "}") == answer.to_json()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 64])
def test_the_batch_proofs_written_as_text_are_the_json_of_freshness_proof(size: int) -> None:
    """The notary writes each leaf's ``freshness`` member as text (issue 11); it must parse to exactly
    what :func:`freshness_proof` builds for the same statement, leaf, index and path."""
    from notary.core.freshness import freshness_proof, sign_statement
    from notary.signer import proofs_json

    leaves = [leaf_bytes(f"text-proof-nonce-{i:04d}", ["ab" * 32], "cached") for i in range(size)]
    root, paths = merkle.tree_paths([merkle.leaf_hash(leaf) for leaf in leaves])
    statement = sign_statement(KEY, 1234, root, size)
    texts = proofs_json(statement, leaves, paths)
    assert len(texts) == size
    for i, text in enumerate(texts):
        assert json.loads(text) == freshness_proof(statement, leaves[i], i, paths[i])
        assert text == json.dumps(freshness_proof(statement, leaves[i], i, paths[i]), separators=(",", ":"))


def test_leaf_fast_path_memo_does_not_take_one_item_for_two_remembered_digests() -> None:
    """leaf_bytes remembers the last digest list it checked (by text and count): a later list
    whose joined text is the same but with a different count must be checked afresh."""
    a, b = "a" * 64, "b" * 64
    two = leaf_bytes("n" * 22, [a, b], "cached")  # remembered
    assert json.loads(two)["observations"] == [a, b]
    one = leaf_bytes("n" * 22, [f'{a}","{b}'], "cached")
    assert one == canonical_encode_leaf("n" * 22, [f'{a}","{b}'], "cached")
    assert json.loads(one)["observations"] == [f'{a}","{b}']
    assert leaf_bytes("n" * 22, [a, b], "fresh") == canonical_encode_leaf("n" * 22, [a, b], "fresh")


@pytest.mark.parametrize("signed_at,size", [(0, 1), (1234, 7), (1_700_000_000, 1024), (2**53 - 1, 2**20)])
def test_statement_fast_path_is_byte_identical_to_rfc8785(signed_at: int, size: int) -> None:
    """sign_statement writes the statement's canonical text directly (issue 11): the signed
    payload must be exactly canonical_encode of the statement's members."""
    import base64

    from notary.core import canonical_encode
    from notary.core.freshness import Statement, sign_statement

    root = bytes(range(32))
    env = sign_statement(KEY, signed_at, root, size)
    payload = base64.b64decode(env["payload"])
    assert payload == canonical_encode(Statement(KEY.key_id, signed_at, size, root.hex()).to_payload())
    assert Statement.from_payload(json.loads(payload)) == Statement(KEY.key_id, signed_at, size, root.hex())


def test_statement_outside_the_fast_path_is_still_refused() -> None:
    from notary.core.freshness import sign_statement
    from notary.errors import EncodingError

    with pytest.raises(EncodingError):
        sign_statement(KEY, 2**53, bytes(32), 1)  # not a safe integer: canonical JSON refuses it


# -- the client's per-answer fast paths (exact leaf bytes, digests kept by the verifier) ----------


def _respelled(leaf: bytes, how: str) -> bytes:
    d = json.loads(leaf)
    if how == "spaced":
        return json.dumps(d, indent=1).encode()
    if how == "reordered":
        return json.dumps({"source": d["source"], "observations": d["observations"], "nonce": d["nonce"]},
                          separators=(",", ":")).encode()
    return json.dumps(d, separators=(",", ":"), ensure_ascii=True).replace('"n', '"\\u006e', 1).encode()  # escaped


@pytest.mark.parametrize("how", ["spaced", "reordered", "escaped"])
@pytest.mark.parametrize("source", ["fresh", "cached"])
def test_a_leaf_spelled_otherwise_still_verifies_and_says_the_same(how: str, source: str) -> None:
    """A leaf byte-identical to the canonical one for this nonce and these digests is taken
    without parsing; any other spelling is parsed and compared, as before: same observations."""
    rnd = _obs_round()
    nonce = "this-request-nonce-0042"
    canonical = leaf_bytes(nonce, rnd.digests, source)
    other = _respelled(canonical, how)
    assert other != canonical and json.loads(other) == json.loads(canonical)
    got = []
    for leaf in (canonical, other):
        [proof] = stamp_batch(KEY, 1010, [leaf])
        [obs] = verify_answer(rnd.envelopes, proof, KEY.verify_key, nonce=nonce)
        got.append(obs)
        assert (obs.nonce, obs.signed_at, obs.source, obs.age) == (nonce, 1010, source, 10)
        with pytest.raises(VerificationError, match="nonce does not match"):
            verify_answer(rnd.envelopes, proof, KEY.verify_key, nonce="another-request-nonce-01")
    assert got[0] == got[1]


@pytest.mark.parametrize("leaf_of", [
    lambda digests: leaf_bytes("this-request-nonce-0042", ["00" * 32], "fresh"),  # another observation
    lambda digests: leaf_bytes("this-request-nonce-0042", digests + digests, "fresh"),  # one named twice
    lambda digests: leaf_bytes("this-request-nonce-0042", digests, "fresh")[:-1] + b',"x":1}',  # a member more
])
def test_a_leaf_that_is_not_the_expected_one_is_parsed_and_refused(leaf_of: Any) -> None:
    rnd = _obs_round()
    [proof] = stamp_batch(KEY, 1010, [leaf_of(list(rnd.digests))])
    with pytest.raises(VerificationError):
        verify_answer(rnd.envelopes, proof, KEY.verify_key, nonce="this-request-nonce-0042")


def test_a_digest_the_verifier_kept_is_the_one_compared_with_the_leaf() -> None:
    """``Verified.digest`` (set by a caching verifier, e.g. client.verify.verify_cached) stands for
    the SHA-256 of the payload bytes: a verifier that got it wrong makes the answer fail."""
    from dataclasses import replace

    from notary.core import OBSERVATION_TYPE, verify_envelope

    rnd = _obs_round()
    [proof] = stamp_batch(KEY, 1010, [leaf_bytes("this-request-nonce-0042", rnd.digests, "cached")])

    def keeping(digest: str | None) -> Any:
        def verify(env: Any, key: Any, ptype: str) -> Any:
            v = verify_envelope(env, key, ptype)
            return replace(v, digest=digest or hashlib.sha256(v.payload_bytes).hexdigest()) if ptype == OBSERVATION_TYPE else v
        return verify

    assert verify_answer(rnd.envelopes, proof, KEY.verify_key, nonce="this-request-nonce-0042", verify=keeping(None))
    with pytest.raises(VerificationError, match="other observations"):
        verify_answer(rnd.envelopes, proof, KEY.verify_key, nonce="this-request-nonce-0042", verify=keeping("ab" * 32))


def test_bound_is_dataclasses_replace_of_the_freshness_fields() -> None:
    """Observation.bound builds the object field by field: it must keep every other field (a
    field added later included) and set nonce, signed_at, source and age as replace() does."""
    from dataclasses import fields, replace

    from notary.core import Observation

    base: dict[str, Any] = {f.name: f"value-of-{f.name}" for f in fields(Observation)}
    base.update(observed_at=1000, signed_at=7, age=3)
    obs = Observation(**base)
    for signed_at, age in ((1010, 10), (990, 0)):  # never a negative age
        got = obs.bound("the-nonce", signed_at, "fresh")
        assert got == replace(obs, nonce="the-nonce", signed_at=signed_at, source="fresh", age=age)
