"""Tests of minissl/ops (the folders of tests/ mirror minissl/)."""
