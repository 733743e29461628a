"""`panosync batch`: many panoramas from a JSONL file of jobs, here or on a Ray cluster."""
