"""Training engines: each takes the same prepared inputs and writes the same run folder."""
