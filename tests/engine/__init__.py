"""Engine tests: predict, blend, finalize and the local pipeline against nnU-Net and each other."""
