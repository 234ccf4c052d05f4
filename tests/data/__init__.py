"""Tests of minissl/data (the folders of tests/ mirror minissl/)."""
