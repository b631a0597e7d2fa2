"""The 2NN on a few MNIST digits as a Flower app, for privfl-flower's tests."""
