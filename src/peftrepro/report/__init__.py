"""The report side: run records in, the paper's tables and REPORT.md out. Reads records only.

    records     the records as read: one Record per record.json (+ its predictions); facts about runs
    paper       the paper's numbers (data/paper.csv) and its printed units
    specs       each paper table as data: rows, columns, where a record goes, the paper's value
    baselines   failed fits: a run against its task's trivial baseline
    resampling  E2E's evaluation-set error: a bootstrap over MRs from the saved predictions
    cells       records -> each table's cells (`build_table`)
    claims      the paper's claims judged on the cells
    plots       the figures of Tables 5 and 6
    render      a table's page (.md), its CSV and figure (`write_table`)
    params      the trainable-parameter table (from the code alone)
    aggregate   `python -m peftrepro.report.aggregate`: every table from the records
    lowrank     the linear algebra of the paper's §7 (subspace similarity, amplification)
    factors     the runs §7 reads: Table 6's LoRA runs with their kept factors, and what is missing
    subspace    `python -m peftrepro.report.subspace`: Figures 3 and 4 from our Table 6 runs
    amplification `python -m peftrepro.report.amplification`: Table 7 from our Table 6 runs
    progress    REPORT.md's "At a glance": how far each table is, what is left and how long it takes
    provenance  REPORT.md on how the runs were made, and why their numbers are not the paper's
    protocol    REPORT.md on the fair protocol: selected rates, baselines, the peft-loop budget, verdicts
    page        `python -m peftrepro.report`: results/REPORT.md and constraints.txt
"""
