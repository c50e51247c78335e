"""The ``greenchannel`` command line, on top of :mod:`broker.client`.

How a subcommand is built (keep to it when adding one):

* one module ``broker/cli/_<command>.py`` per subcommand (``_requests`` serves three:
  ``submit``, ``watch``, ``status``), with two functions::

      def add_parser(subparsers, name: str, help: str) -> None: ...  # registers ``name``
      def run(args: argparse.Namespace) -> int: ...                  # the exit status

* one line in :data:`broker.cli._main.COMMANDS`: ``name -> Command(module path, help)``.

Only the dispatched command's module is imported: ``greenchannel --help`` lists every command
from that table alone, and ``greenchannel submit`` never loads the hub. A module imports the
client at its top; heavier roles (``broker.hub``, ``adapters``, ``agencies.demo``,
``broker.embedded``) only inside the functions that need them, or at the top of a module that
only that command loads. The environment is read in :mod:`broker.cli._env` and nowhere else.
"""

from ._main import main

__all__ = ["main"]
