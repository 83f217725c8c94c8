"""/v1/logs/keys, /v1/logs/tree-head, /v1/logs/<id>/proof, /v1/logs/consistency: what anyone
holding the public keys needs to check the trail without trusting the operator (RFC 9162)."""

import sqlalchemy as sa
from apifairy import arguments, authenticate, other_responses, response
from marshmallow import RAISE
from werkzeug.exceptions import NotFound

from backend.audit import anchors, listing, proofs, signing
from backend.audit.reads import reading_engine
from backend.audit.writer import writer
from backend.errors import BAD_PARAMETER, UNAUTHORIZED, ValidationFailed
from backend.extensions import db, token_auth
from backend.models import User
from backend.schemas import ErrorSchema
from backend.tree_schemas import (
    ConsistencyProofSchema,
    ConsistencyQuerySchema,
    InclusionProofSchema,
    KeyListSchema,
    ProofQuerySchema,
    TreeHeadSchema,
)
from backend.v1 import bp
from backend.v1.logs import MAX_ID

NO_HEAD = {404: (ErrorSchema, "No tree head has been signed yet")}
NOT_VISIBLE = "No audit row with that id is visible to you."


@bp.get("/logs/keys")
@response(KeyListSchema)
def keys():
    """The public keys of the signed tree heads (public)

    Every key that has signed a tree head, retired ones too (`retired_at` set), so that older
    heads still verify. Save this document: it is the `KEYS.json` of the offline verifier.
    """
    writer().list_key()  # listed before its first head, so a fresh service answers it too
    with db.engine.connect() as connection:
        return {"keys": signing.listed_keys(connection)}


@bp.get("/logs/tree-head")
@authenticate(token_auth)
@response(TreeHeadSchema)
@other_responses({**UNAUTHORIZED, **NO_HEAD})
def tree_head():
    """The latest signed tree head

    Signed every `AUDIT_CHECKPOINT_EVERY` rows, and every few seconds while rows are written.
    """
    return signing.head_as_json(_latest_head())


@bp.get("/logs/<int:log_id>/proof")
@authenticate(token_auth)
@arguments(ProofQuerySchema, unknown=RAISE)
@response(InclusionProofSchema)
@other_responses(
    {**UNAUTHORIZED, **BAD_PARAMETER, 404: (ErrorSchema, "No such row, or not yours to see")}
)
def proof(args: dict, log_id: int):
    """The inclusion proof of one row (RFC 9162, 2.1.3)

    Leaf index `id - 1` in the tree of `tree_size` leaves (default: the latest signed tree
    head's size; a head is signed at once when the row is newer). Its leaf hash is
    SHA-256(0x00 || the row's `hash` as 32 bytes).
    """
    size = args.get("tree_size")
    # On the standby when there is one that holds the row and the tree of that size (reads.py):
    # one look at the standby for the row's visibility and its proof.
    engine = reading_engine(up_to_id=max(log_id, size or 0)) if log_id <= MAX_ID else None
    if engine is None:
        raise NotFound(NOT_VISIBLE)
    viewer = token_auth.current_user()
    try:
        with _reading(engine) as connection:
            if size is not None:
                return _proof_at_size(connection, log_id, size, viewer)
            if (answer := _proof_at_latest_head(connection, log_id, viewer)) is not None:
                return answer
        # No signed head covers the row yet: one is signed now, on the primary, which then
        # holds it (a standby may not have replayed it yet).
        with _reading(db.engine) as connection:
            _LastHead.size = size = _head_covering(connection, log_id).tree_size
            return proofs.inclusion_at(connection, log_id - 1, size)
    except proofs.BadSize as error:
        raise ValidationFailed({error.field: [str(error)]}) from None


@bp.get("/logs/consistency")
@authenticate(token_auth)
@arguments(ConsistencyQuerySchema, unknown=RAISE)
@response(ConsistencyProofSchema)
@other_responses({**UNAUTHORIZED, **BAD_PARAMETER})
def consistency(args: dict):
    """The consistency proof between two tree sizes (RFC 9162, 2.1.4)

    Proves that the tree of `second` leaves extends the tree of `first` leaves, across purges
    too (a purge keeps the tree's stored hashes).
    """
    with _reading(reading_engine(up_to_id=args["second"])) as connection:
        try:
            return proofs.consistency(connection, args["first"], args["second"])
        except proofs.BadSize as error:
            raise ValidationFailed({error.field: [str(error)]}) from None


# A proof's one query, per dialect (proofs.with_nodes): the row's id as the column
# `visible_id` (NULL where the viewer may not see it) and the stored hashes it reads,
# beside the tree's size, or beside the latest signed head.
_AT_SIZE = {
    name: listing.ROW_ID.beside(query, "visible_id")
    for name, query in proofs.SIZE_AND_NODES.items()
}
_AT_LATEST_HEAD = {
    name: listing.ROW_ID.beside(query, "visible_id")
    for name, query in proofs.with_nodes(signing.LATEST_HEAD).items()
}


class _LastHead:
    """The size of the latest signed head this process has read: the likely size of the next
    proof's (a head is signed every few seconds), whose hashes are asked for with the head. A
    wrong guess costs a second query, never a wrong proof."""

    size = 0


def _proof_at_size(connection: sa.Connection, log_id: int, size: int, viewer: User) -> dict:
    """The inclusion proof of the row at tree size `size`, in one query."""
    reads = proofs.inclusion_reads(log_id - 1, size)
    row = _asked(connection, _AT_SIZE, log_id, viewer, reads)
    if row is None or row.visible_id is None:  # (no chain's head: an empty trail)
        raise NotFound(NOT_VISIBLE)
    nodes = proofs.stored(connection, reads, row)
    return proofs.inclusion(log_id - 1, size, row.last_id, nodes)


def _proof_at_latest_head(connection: sa.Connection, log_id: int, viewer: User) -> dict | None:
    """The inclusion proof of the row at the latest signed head, in one query when the head
    has the size last seen (_LastHead); None when no head covers the row yet. NotFound when
    `viewer` may not see it."""
    guess = _LastHead.size
    reads = proofs.inclusion_reads(log_id - 1, guess)
    head = _asked(connection, _AT_LATEST_HEAD, log_id, viewer, reads)
    if head is None:  # no head signed yet: visibility asked alone
        if not listing.is_visible(connection, log_id, viewer):
            raise NotFound(NOT_VISIBLE)
        return None
    if head.visible_id is None:
        raise NotFound(NOT_VISIBLE)
    _LastHead.size = size = head.tree_size
    if size < log_id:
        return None
    if size == guess:
        return proofs.inclusion(log_id - 1, size, size, proofs.stored(connection, reads, head))
    return proofs.inclusion_at(connection, log_id - 1, size)


def _asked(connection: sa.Connection, statements: dict, log_id: int, viewer: User, reads):
    """One of the statements above, for `viewer` and the hashes of `reads` (proofs.Reads)."""
    statement, params = statements[connection.dialect.name].asked_by(log_id, viewer)
    return connection.execute(statement, {**params, **reads.params()}).first()


def _reading(engine: sa.Engine) -> sa.Connection:
    """A connection for a proof's reads, in autocommit: no BEGIN and ROLLBACK round trips, and
    nothing a proof reads changes once written (stored nodes and signed heads are append-only),
    so one snapshot for all its statements is not needed."""
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def _head_covering(connection: sa.Connection, log_id: int):
    """The latest signed head, signed now when the row is newer than it (heads come every few
    seconds): at most one signature per batch of new rows, however many proofs are asked."""
    head = signing.latest_head(connection)
    if head is not None and head.tree_size >= log_id:
        return head
    writer().list_key()
    with writer().engine.begin() as signer:
        anchors.sign_tree_head(signer, writer().signer)
    connection.rollback()  # a new snapshot, which has the head just signed
    return signing.latest_head(connection)


def _latest_head():
    with db.engine.connect() as connection:
        head = signing.latest_head(connection)
    if head is None:
        raise NotFound("No tree head has been signed yet.")
    return head
