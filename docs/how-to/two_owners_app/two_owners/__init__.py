"""Alice's and Bob's federation as a Flower app (docs/how-to/two-owners-two-nodes.md)."""
