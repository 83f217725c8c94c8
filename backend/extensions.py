"""Extension objects, created here uninitialised (the audit signals are in backend/signals.py).

The app factory (`backend.create_app`) binds each extension to the app; modules import them
from here, so nothing imports the app itself.
"""

import apifairy as _apifairy
from flask import current_app
from flask_httpauth import HTTPBasicAuth, HTTPTokenAuth
from flask_marshmallow import Marshmallow
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy


class APIFairy(_apifairy.APIFairy):
    """APIFairy whose OpenAPI document is kept per app, not per process.

    The library builds the document on its first request and keeps it on this module-level
    object: every app of the process (each test's) would get the first one's, `servers` taken
    from that first request's Host. backend/openapi.py writes `servers` from the settings;
    this keeps the result with the app whose settings they are.
    """

    @property
    def apispec(self) -> dict:
        """The app's document, built on first use."""
        document = current_app.extensions.get("openapi_document")
        if document is None:
            document = self.apispec_callback(self._generate_apispec())
            current_app.extensions["openapi_document"] = document
        return document


db = SQLAlchemy()
migrate = Migrate()
ma = Marshmallow()
apifairy = APIFairy()
basic_auth = HTTPBasicAuth(realm="audit-trail")
token_auth = HTTPTokenAuth(scheme="Bearer", realm="audit-trail")
