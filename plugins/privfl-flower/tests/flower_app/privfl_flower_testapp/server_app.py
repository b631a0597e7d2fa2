"""The tests' ServerApp: privfl's server half with the tests' federation."""

from privfl_flower import make_server_app

from privfl_flower_testapp.task import build

server = make_server_app(build)
