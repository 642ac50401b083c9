"""The data side: the prepared store and its Dataset, splits, masks, topology, prep, synth."""
