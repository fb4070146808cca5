"""The web dashboard at ``/dashboard``: server-rendered pages (Jinja2) kept live by htmx
(``static/htmx.min.js``, vendored, version 2.0.4) and an EventSource on the job page; charts
are inline SVG drawn on the server. Nothing is fetched from outside, so it works offline.

Every page is scoped to the signed-in tenant through the same service calls as ``/v1``
(another tenant's id is "not found"); see :mod:`api.dashboard.access` and
:mod:`api.dashboard.session`.
"""
