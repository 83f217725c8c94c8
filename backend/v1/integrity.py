"""/v1/logs/verify: the integrity verdict of the whole trail, for monitoring."""

from apifairy import authenticate, other_responses, response

from backend.audit import verification
from backend.audit.writer import writer
from backend.errors import ADMIN_ONLY
from backend.extensions import db, token_auth
from backend.schemas import VerdictSchema
from backend.signals import Target
from backend.v1 import bp, note


@bp.get("/logs/verify")
@authenticate(token_auth, role="admin")
@response(VerdictSchema)
@other_responses(ADMIN_ONLY)
def verify():
    """Check the trail's hash chain and signatures end to end (admin)

    The same verdict as `flask audit verify`: 200 either way, with `intact` false and the
    first broken row named when the trail was tampered with. It walks every row, so poll it
    minutes apart, not seconds.
    """
    with verification.snapshot(db.engine) as connection:
        verdict = verification.verify(
            connection,
            writer().key,
            checkpoint_every=writer().checkpoint_every,
            own_key=writer().signer.public,
        )
    note(target=Target("trail"), filters={}, intact=verdict.intact, broken_row=verdict.broken_row)
    return verdict.as_dict()
