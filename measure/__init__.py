"""The measuring instrument: per-call timing of sampling runs, and reports comparing two runs."""
