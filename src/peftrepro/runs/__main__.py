"""`python -m peftrepro.runs`: one run, or a sweep with -m (peftrepro.runs.cli)."""

from peftrepro.runs.cli import main

main()
