"""Video and cine: frames and label PNGs, and objects tracked through a clip as the official video script."""
