"""The OpenAPI shapes of the Merkle tree's routes (backend/v1/tree.py): keys, signed tree
heads, inclusion and consistency proofs. Hashes are lowercase hex (CONTRACT.md)."""

from marshmallow import fields, validate

from backend.extensions import ma

HEX_HASH = {"pattern": "^[0-9a-f]{64}$", "example": "a" * 64}
TREE_SIZE = validate.Range(min=1, max=2**63 - 1, error="must be a whole number of at least 1")


class KeySchema(ma.Schema):
    key_id = fields.String(
        required=True, metadata={"description": "The key's 4-byte note key hash, in hex."}
    )
    algorithm = fields.String(required=True, metadata={"enum": ["Ed25519"]})
    public_key = fields.String(
        required=True, metadata={"description": "Base64 of the 32 raw bytes of the public key."}
    )
    name = fields.String(
        required=True, metadata={"description": "The key's name in signed notes: the log's origin."}
    )
    verifier_key = fields.String(
        required=True,
        metadata={"description": "Go's sumdb/note verifier key, `<name>+<key id>+<base64>`."},
    )
    created_at = fields.String(required=True)
    retired_at = fields.String(
        required=True, allow_none=True, metadata={"description": "Null while the key signs."}
    )


class KeyListSchema(ma.Schema):
    keys = fields.List(fields.Nested(KeySchema), required=True)


class TreeHeadSchema(ma.Schema):
    tree_size = fields.Integer(required=True)
    root_hash = fields.String(required=True, metadata=HEX_HASH)
    timestamp = fields.String(required=True, metadata={"description": "When it was signed."})
    checkpoint = fields.String(
        required=True,
        metadata={
            "description": "A C2SP tlog-checkpoint (origin, tree size, base64 root hash)"
            " signed as a C2SP signed note with a key of `/v1/logs/keys`."
        },
    )


class ProofQuerySchema(ma.Schema):
    tree_size = fields.Integer(
        validate=TREE_SIZE,
        metadata={"description": "The tree's size; default: the latest signed tree head's."},
    )


class InclusionProofSchema(ma.Schema):
    leaf_index = fields.Integer(required=True, metadata={"description": "The row's id - 1."})
    tree_size = fields.Integer(required=True)
    leaf_hash = fields.String(required=True, metadata=HEX_HASH)
    audit_path = fields.List(fields.String(metadata=HEX_HASH), required=True)


class ConsistencyQuerySchema(ma.Schema):
    first = fields.Integer(required=True, validate=TREE_SIZE)
    second = fields.Integer(required=True, validate=TREE_SIZE)


class ConsistencyProofSchema(ma.Schema):
    first = fields.Integer(required=True)
    second = fields.Integer(required=True)
    consistency_path = fields.List(fields.String(metadata=HEX_HASH), required=True)
