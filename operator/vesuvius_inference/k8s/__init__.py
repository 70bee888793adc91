"""Control plane: the InferenceJob operator. Never imports torch, nnU-Net or the engine modules."""
