"""The tests' ClientApp, with a mod that makes one node stop answering mid-round.

With run config ``hang-at = "<phase>"`` and ``hang-dir = "<folder>"``, the node whose
data folder that is writes the file ``reached-<phase>`` there when the server asks
it for that secure-aggregation phase, and then does not answer (the test kills the
node when the file appears), as a node that goes away in the middle of a round would.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import Context, Message
from privfl_flower import make_client_app
from privfl_flower.wire import unpack

from privfl_flower_testapp.task import build


def hang_at_phase(message: Message, context: Context, call_next):
    """A Flower mod: stop answering at the run config's ``hang-at`` phase."""
    phase, folder = context.run_config.get("hang-at"), context.run_config.get("hang-dir")
    if phase and folder == context.node_config["data-dir"]:
        _, _, fields = unpack(message.content, "the server")
        if fields["phase"] == phase:
            Path(str(folder), f"reached-{phase}").touch()
            time.sleep(3600)
    return call_next(message, context)


client = make_client_app(build, mods=[hang_at_phase])
