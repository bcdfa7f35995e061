"""Outputs: rendering maps, file formats, index.csv, run.json, and the output.dir lock and run stamp."""
