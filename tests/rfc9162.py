"""An independent check of our tree and signatures, written from the specifications' text and
sharing no code with backend/audit (merkle.py, notes.py):

- RFC 9162, section 2.1.1 (the Merkle Tree Hash, MTH), 2.1.3.2 (verifying an inclusion proof)
  and 2.1.4.2 (verifying a consistency proof), step by step as the RFC numbers them;
- C2SP signed-note (https://c2sp.org/signed-note) and tlog-checkpoint
  (https://c2sp.org/tlog-checkpoint): the Ed25519 signature checked with `cryptography` over
  the note's text, the key hash computed as the spec defines it.
"""

import base64
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mth(entries: list[bytes]) -> bytes:
    """2.1.1: MTH({}) = SHA-256(); MTH({d(0)}) = SHA-256(0x00 || d(0)); for n > 1, with k the
    largest power of two smaller than n, MTH(D_n) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))."""
    n = len(entries)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return sha256(b"\x00" + entries[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return sha256(b"\x01" + mth(entries[:k]) + mth(entries[k:]))


def verify_inclusion(
    leaf_index: int, tree_size: int, leaf_hash: bytes, inclusion_path: list[bytes], root: bytes
) -> bool:
    """2.1.3.2, steps 1 to 6."""
    # 1. Compare leaf_index against tree_size. If leaf_index >= tree_size, fail.
    if leaf_index >= tree_size:
        return False
    # 2. Set fn to leaf_index and sn to tree_size - 1.
    fn, sn = leaf_index, tree_size - 1
    # 3. Set r to hash.
    r = leaf_hash
    # 4. For each value p in the inclusion_path array:
    for p in inclusion_path:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn % 2 == 1 or fn == sn:
            # i. Set r to HASH(0x01 || p || r).
            r = sha256(b"\x01" + p + r)
            # ii. If LSB(fn) is not set, then right-shift both fn and sn equally until either
            # LSB(fn) is set or fn is 0.
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn //= 2
                    sn //= 2
        # Otherwise: i. Set r to HASH(0x01 || r || p).
        else:
            r = sha256(b"\x01" + r + p)
        # c. Finally, right-shift both fn and sn one time.
        fn //= 2
        sn //= 2
    # 5. Compare sn to 0. Compare r against the root_hash. If sn is equal to 0 and r and the
    # root_hash are equal, then the log has proven the inclusion of hash.
    return sn == 0 and r == root


def verify_consistency(
    first: int, second: int, first_hash: bytes, second_hash: bytes, path: list[bytes]
) -> bool:
    """2.1.4.2, steps 1 to 8 (first > 0, as the RFC's proofs require)."""
    # 1. If consistency_path is an empty array, stop and fail the proof verification.
    if not path:
        return False
    # 2. If first is an exact power of 2, then prepend first_hash to the consistency_path.
    if first & (first - 1) == 0:
        path = [first_hash, *path]
    # 3. Set fn to first - 1 and sn to second - 1.
    fn, sn = first - 1, second - 1
    # 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    while fn % 2 == 1:
        fn //= 2
        sn //= 2
    # 5. Set both fr and sr to the first value in the consistency_path array.
    fr = sr = path[0]
    # 6. For each subsequent value c in the consistency_path array:
    for c in path[1:]:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn % 2 == 1 or fn == sn:
            # i. Set fr to HASH(0x01 || c || fr). Set sr to HASH(0x01 || c || sr).
            fr = sha256(b"\x01" + c + fr)
            sr = sha256(b"\x01" + c + sr)
            # ii. If LSB(fn) is not set, then right-shift both fn and sn equally until either
            # LSB(fn) is set or fn is 0.
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn //= 2
                    sn //= 2
        # Otherwise: i. Set sr to HASH(0x01 || sr || c).
        else:
            sr = sha256(b"\x01" + sr + c)
        # c. Finally, right-shift both fn and sn one time.
        fn //= 2
        sn //= 2
    # 7. After completing iterating through the consistency_path array as described above,
    # verify that the fr calculated is equal to the first_hash supplied, that the sr
    # calculated is equal to the second_hash supplied, and that sn is 0.
    return fr == first_hash and sr == second_hash and sn == 0


def open_signed_checkpoint(note: str, name: str, public_key: bytes) -> tuple[str, int, bytes]:
    """(origin, tree size, root hash) of a C2SP checkpoint whose signed note carries a valid
    Ed25519 signature by the key (`name`, `public_key`); AssertionError otherwise.

    signed-note: the text ends in a newline and is followed by a blank line, then signature
    lines `— <name> <base64(key hash || signature)>`; an Ed25519 key hash is the first four
    bytes of SHA-256(<name> || 0x0A || 0x01 || <32-byte public key>), the signature is over the
    text (final newline included)."""
    text, signatures = note.split("\n\n", 1)
    text += "\n"
    key_hash = sha256(name.encode() + b"\x0a" + b"\x01" + public_key)[:4]
    for line in signatures.splitlines():
        dash, signer, encoded = line.split(" ")
        assert dash == "\u2014"
        blob = base64.b64decode(encoded)
        if signer == name and blob[:4] == key_hash:
            try:
                Ed25519PublicKey.from_public_bytes(public_key).verify(blob[4:], text.encode())
            except InvalidSignature:
                raise AssertionError("the signature does not verify") from None
            origin, size, root = text.splitlines()[:3]
            return origin, int(size), base64.b64decode(root)
    raise AssertionError(f"no signature by {name}")
