"""The data layer: transforms, training batches, the prepared-dataset format, the mini benchmark's datasets and the
paper's (mtil)."""
