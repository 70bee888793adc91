"""Tests of vesuvius_inference.predict.stage: blended logits against nnU-Net's predictor (tests/oracle.py), the
device path, the accumulator's checkpoints, devices, signals, two runs of one part."""
