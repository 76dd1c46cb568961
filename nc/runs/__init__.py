"""Runs: parameter files (nc.runs.params), one cell's orchestration (cell), the cube (cube), the sweep and its
executors, job records, the plan and the shared command line. One cell's functions are re-exported here:
`nc.runs.run(params, cube_dir)`.
"""
from nc.runs.cell import (  # noqa: F401
    check_feature_dim,
    checkpoint_path,
    data_info,
    is_current,
    load_data,
    merge_and_write,
    part_finished,
    part_path,
    paths,
    run,
    run_key,
    run_part,
)
