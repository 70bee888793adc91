"""The demo: a synthetic scroll with ground truth, a small trained model, and a preview image."""
