"""One module per command: load → prepare → run → write the run folder."""
