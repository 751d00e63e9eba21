"""Running the network over volumes: preprocessing, the volume predictor, post-processing."""
