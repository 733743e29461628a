"""The GPU check (gpu_check.py, its entry point), in four modules, each importing only those above it:

    tables.py   GPU.md: the headline and each part's table, and the figures derived for them
    plans.py    the sizes and step counts of a run: the GPU's and the smoke run's
    harness.py  the clock, the guarded runs and parts, GPU.json and GPU.md rewritten after each run
    parts.py    the pipelines, the timed runs, and the parts that measure with them (Check)
"""
