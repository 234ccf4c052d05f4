"""Tests of minissl/methods (the folders of tests/ mirror minissl/)."""
