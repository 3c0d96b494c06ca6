"""Sweeps: `zerorun -m KEY=A,B ...` as Slurm job arrays, with a durable record and verbs to follow them.

    expansion  the command line's overrides -> every member's overrides, each swept value typed; the sweep id
    members    each member's resolved config and config.yaml, built from one composed config
    launcher   the bodies of the Hydra sweeper and launcher (hydra_plugins/zerorun_launcher holds the shells)
    plan       the job arrays of one submission: preflight, split under MaxArraySize, rendered files
    dryrun     dry_run=true: write and print the arrays, submit nothing
    submit     a new sweep, the same sweep again, resubmitting the failed members; the submission protocol
    refresh    members' states from Slurm and their run folders; an array found by its job name
    record     sweep.json and its lock
    local      cluster=local: the members run here
    verbs      zerorun status | cancel | resubmit | report SWEEP_DIR
    report     the report's data and plot

Order inside the package (each imports only those before it): expansion < members < plan; record < refresh;
plan, refresh < local < dryrun < submit; record < report; submit, report < verbs; launcher on top.
See docs/sweeps.md.
"""
