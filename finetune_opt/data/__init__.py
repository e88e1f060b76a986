"""Data: reading tables and instruction sets, labels, the task's splits, batching and packing."""
