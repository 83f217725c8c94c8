"""Absolute URLs the service writes into its answers (the links of `/`, `Link` headers).

With PUBLIC_URL set they start with it, whatever Host the request names: a client that sends
`Host: evil.example` gets no link to evil.example. Unset, they are built from the request's
own Host (restricted by TRUSTED_HOSTS where that is set), for that response only.
"""

from flask import current_app, request, url_for


def external_url(endpoint: str, **values) -> str:
    """The absolute URL of `endpoint` with `values`, under PUBLIC_URL when it is set."""
    public = current_app.config["PUBLIC_URL"]
    if public is None:
        return url_for(endpoint, _external=True, **values)
    # PUBLIC_URL stands for the app's root (the request's script root included).
    return public + url_for(endpoint, **values).removeprefix(request.script_root)
