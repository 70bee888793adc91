"""Tests of vesuvius_inference.geometry: the patch grid, parts and chunk ownership, the Gaussian map, held
to nnU-Net's own functions."""
