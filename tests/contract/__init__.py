"""Tests of vesuvius_inference.contract: settings and their routes, errors and exit codes, progress lines,
locations and places, prechecks, NGFF metadata."""
