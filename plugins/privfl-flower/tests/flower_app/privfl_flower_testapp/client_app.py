"""The tests' ClientApp, with a mod that makes one node stop in the middle of a round.

With run config ``stop-dir = "<folder>"``, ``stop-round = <r>`` and ``stop-at =
"<phase>"``, the node whose data folder that is counts the rounds it starts (in the
file ``rounds-started`` there) and, when the server asks it for that
secure-aggregation phase of round ``r``, writes the file ``reached-<phase>`` there
and does not answer: the test then stops the SuperNode, as an owner that shuts its
machine down in the middle of a round would.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import Context, Message
from privfl_flower import make_client_app
from privfl_flower.wire import unpack

from privfl_flower_testapp.task import build


def stop_mid_round(message: Message, context: Context, call_next):
    """A Flower mod: stop answering at the run config's ``stop-at`` phase of ``stop-round``."""
    folder = context.run_config.get("stop-dir")
    if folder and folder == context.node_config["data-dir"]:
        _, _, fields = unpack(message.content, "the server")
        started = Path(str(folder), "rounds-started")
        count = int(started.read_text()) if started.exists() else 0
        if fields["kind"] == "train":
            started.write_text(str(count + 1))
        elif fields["phase"] == context.run_config["stop-at"] and count == int(
            context.run_config["stop-round"]
        ):
            Path(str(folder), f"reached-{fields['phase']}").touch()
            time.sleep(3600)
    return call_next(message, context)


client = make_client_app(build, mods=[stop_mid_round])
