"""/v1/sinks: the relay's sinks, where each stands and whether it is delivering."""

from apifairy import authenticate, other_responses, response
from werkzeug.exceptions import ServiceUnavailable

from backend.errors import ADMIN_ONLY
from backend.extensions import db, token_auth
from backend.relay.command import configured_sinks
from backend.relay.config import SinksFileError
from backend.relay.status import sink_statuses
from backend.schemas import ErrorSchema, SinkListSchema
from backend.v1 import bp


@bp.get("/sinks")
@authenticate(token_auth, role="admin")
@response(SinkListSchema)
@other_responses({**ADMIN_ONLY, 503: (ErrorSchema, "AUDIT_SINKS_FILE cannot be used")})
def sinks():
    """The relay's sinks and their state (admin)

    Each sink of AUDIT_SINKS_FILE, in the file's order: the last row id delivered, how many ids
    it is behind the trail's newest row, `running`, `failing` (retrying; see `last_error`) or
    `stopped` (no relay has delivered it for a minute), and the failed attempts so far.
    """
    try:
        configured = configured_sinks()
    except SinksFileError as error:
        raise ServiceUnavailable(str(error)) from None
    with db.engine.connect() as connection:
        return {"items": sink_statuses(connection, configured)}
