"""Tests of vesuvius_inference.stages: plan, blend, finalize, the local pipeline and check, with a real
model."""
