"""The privfl command line."""
