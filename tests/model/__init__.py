"""Tests of vesuvius_inference.model.network: loading networks and model files (local, s3://, hf://), inputs
checked against the model."""
