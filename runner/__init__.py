"""onnxcam runner: explain graphs -> heatmaps, overlays, index.csv (no torch)."""
