"""A tiny privfl federation as a Flower app, for privfl-flower's tests."""
