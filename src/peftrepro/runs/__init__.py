"""The run side: a composed config in, one record out.

    plan        resolve and validate a config: its key, its folder, nothing loaded (`plan_run`)
    execute     one run: skip / reuse / set up / train / evaluate / record (`run_one`)
    records     the run key, the record's files and their atomic writes
    reuse       a finished equivalent run of another table, copied instead of trained
    scoring     deferred scoring of saved predictions (E2E without Java)
    factors     LoRA's factors of a few layers exported from finished runs' adapters (paper §7)
    train       the training loop
    devices     the device of a run; on a machine with several GPUs, one GPU per job of a sweep
    lr_search   the learning-rate selection on dev splits
    tracking    none | wandb
    envinfo     versions, commit, hardware for every record
    timing      device-synchronised timing (benchmarks, Table 1)
    cli         the Hydra entry (`python -m peftrepro.runs`)
"""
