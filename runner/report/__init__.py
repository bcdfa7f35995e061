"""report.html: one page to look at a whole run in a browser."""
