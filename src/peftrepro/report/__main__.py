"""`python -m peftrepro.report`: results/REPORT.md and results/constraints.txt (peftrepro.report.page)."""

import sys

from peftrepro.report.page import main

sys.exit(main())
