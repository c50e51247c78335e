"""The duty officer's web console: one agency's live view of the bus, run on its own side.

``greenchannel console --as AGENCY`` serves it on localhost. It is a client of the bus only
(:class:`broker.client.BusClient`, signed with the agency's own key): it never imports
:mod:`broker.hub` and adds no new way into the bus.

* Now: the agency's open requests, newest first, with a live countdown to each one's next deadline
  (server-sent events fed by the broker's Watch);
* Case: every request of a case with its signed timeline, and the money trail as a graph;
* SLA: the figures of ``sla report`` as charts;
* actions: extend, release, cancel, convert to freeze, behind a CSRF token.

Its charts and graph are Chart.js and Cytoscape.js, vendored (``static/vendor/VENDORED.json``)
so it works offline. docs/console.md has the login / CSRF story.
"""

from ._app import create_app
from ._config import ConsoleConfig, parse_listen
from ._errors import ConsoleError
from ._serve import serve

__all__ = ["ConsoleConfig", "ConsoleError", "create_app", "parse_listen", "serve"]
