"""The ServerApp: privfl's server half, on the SuperLink's machine."""

from privfl_flower import make_server_app

from two_owners.task import build

server = make_server_app(build)
