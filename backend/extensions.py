"""Extension objects and the audit signals, created here uninitialised.

The app factory (`backend.create_app`) binds each extension to the app; modules import them
from here, so nothing imports the app itself.
"""

from apifairy import APIFairy
from blinker import Namespace
from flask_httpauth import HTTPBasicAuth, HTTPTokenAuth
from flask_marshmallow import Marshmallow
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()
migrate = Migrate()
ma = Marshmallow()
apifairy = APIFairy()
basic_auth = HTTPBasicAuth(realm="audit-trail")
token_auth = HTTPTokenAuth(scheme="Bearer", realm="audit-trail")

log_signals = Namespace()
auth_log = log_signals.signal("auth_log", doc="Sent by the auth blueprint: logins, logouts.")
v1_log = log_signals.signal("v1_log", doc="Sent for every /v1 request and the acts it performs.")
main_log = log_signals.signal("main_log", doc="Sent by the main blueprint.")
