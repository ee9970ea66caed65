"""Data: synthetic recall tasks (MQAR) generated on the fly, and local text corpora."""
