"""Tests of minissl/nn (the folders of tests/ mirror minissl/)."""
