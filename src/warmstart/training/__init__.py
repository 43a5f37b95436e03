"""Training engines: the native Accelerate loop and the HF Trainer adapter take the same Job and
write the same run folder."""
