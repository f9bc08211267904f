"""Data: the simulator, data set validation, image loading and data sets."""
