"""The ClientApp: on each owner's SuperNode, answers from the owner's data folder."""

from privfl_flower import make_client_app

from two_owners.task import build

client = make_client_app(build)
