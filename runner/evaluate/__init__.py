"""Faithfulness: metrics of one explanation, object boxes, and the dataset summary read back from index.csv."""
