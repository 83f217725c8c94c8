"""C2SP signed notes (https://c2sp.org/signed-note) holding C2SP tlog-checkpoints
(https://c2sp.org/tlog-checkpoint), signed and checked with Ed25519 (`cryptography`).

A checkpoint's text is three lines, `<origin>`, `<tree size>`, `<base64 root hash>`; the note
adds a blank line and one line per signature, `— <key name> <base64(key id || signature)>`,
where the 4-byte key id is SHA-256(name || "\\n" || 0x01 || public key)[:4], as Go's
golang.org/x/mod/sumdb/note does. No app settings, no database: the offline verifier uses it.
"""

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ALGORITHM_ED25519 = 0x01
EM_DASH = "\u2014"


class BadNote(ValueError):
    """A note or checkpoint that is malformed, or signed by no key we know."""


@dataclass(frozen=True)
class VerifierKey:
    """A public key as auditors hold it: its name (the log's origin) and 32 raw bytes."""

    name: str
    public_key: bytes

    @property
    def key_hash(self) -> bytes:
        """The 4-byte id that starts each of its signatures."""
        material = self.name.encode() + b"\n" + bytes([ALGORITHM_ED25519]) + self.public_key
        return hashlib.sha256(material).digest()[:4]

    @property
    def key_id(self) -> str:
        """The key's id in /v1/logs/keys: its key hash in hex."""
        return self.key_hash.hex()

    @property
    def vkey(self) -> str:
        """Go's verifier key string, `<name>+<hex key hash>+<base64(0x01 || public key)>`."""
        encoded = base64.b64encode(bytes([ALGORITHM_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id}+{encoded}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether `signature` is this key's Ed25519 signature of `message`."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


def public_bytes(private_key: Ed25519PrivateKey) -> bytes:
    """The 32 raw bytes of a private key's public half."""
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def checkpoint_text(origin: str, tree_size: int, root_hash: str) -> str:
    """The body of a tlog-checkpoint."""
    root = base64.b64encode(bytes.fromhex(root_hash)).decode()
    return f"{origin}\n{tree_size}\n{root}\n"


def sign(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """`text` as a signed note with one Ed25519 signature under the key `name`."""
    key = VerifierKey(name, public_bytes(private_key))
    signature = private_key.sign(text.encode())
    encoded = base64.b64encode(key.key_hash + signature).decode()
    return f"{text}\n{EM_DASH} {name} {encoded}\n"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint whose signature was checked: what it commits to and which key signed it."""

    origin: str
    tree_size: int
    root_hash: str
    key_id: str
    note: str


def open_checkpoint(note: str, keys: list[VerifierKey]) -> Checkpoint:
    """The checkpoint of a signed note carrying a valid signature of one of `keys`; BadNote
    when it is malformed or no known key signed it (unknown signers are ignored)."""
    text, separator, signatures = note.rpartition("\n\n")
    if not separator or not signatures.endswith("\n"):
        raise BadNote("not a signed note (no blank line before the signatures)")
    text += "\n"
    signer = _known_signer(text, signatures, keys)
    lines = text.split("\n")
    if len(lines) < 4:
        raise BadNote("not a checkpoint: origin, tree size and root hash lines expected")
    origin, size, root = lines[0], lines[1], lines[2]
    try:
        root_hash = base64.b64decode(root, validate=True)
    except ValueError:
        raise BadNote("the checkpoint's root hash is not base64") from None
    if not size.isdigit() or len(root_hash) != 32:
        raise BadNote("the checkpoint's tree size or root hash is malformed")
    return Checkpoint(origin, int(size), root_hash.hex(), signer.key_id, note)


def _known_signer(text: str, signatures: str, keys: list[VerifierKey]) -> VerifierKey:
    for line in signatures.splitlines():
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != EM_DASH:
            raise BadNote(f"malformed signature line: {line!r}")
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except ValueError:
            raise BadNote(f"malformed signature line: {line!r}") from None
        for key in keys:
            if key.name == parts[1] and key.key_hash == blob[:4]:
                if key.verify(text.encode(), blob[4:]):
                    return key
                raise BadNote(f"the signature of key {key.key_id} does not match the note")
    raise BadNote("signed by no listed key")
