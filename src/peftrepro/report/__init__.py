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
    page        `python -m peftrepro.report`: results/REPORT.md and constraints.txt
"""
