"""Runnable studies: `python -m experiments.<name>`; thin scripts over `experiments.common`."""
