"""Training: the recipe and its loop (nc.train.loop), the snapshot measurement (snapshot), what a run records
(variables), its progress file (progress) and DDP (ddp). The loop's public names are re-exported here:
`nc.train.train_one_lr(...)`.
"""
from nc.train.loop import (  # noqa: F401
    GEOMETRY_BUDGET_BYTES,
    RECORD_EPOCH,
    RECORD_SNAPSHOT,
    build_model,
    build_optimizer,
    checkpoint_files,
    empty_record,
    geometry_epochs,
    loss_value,
    lr_milestones,
    lr_schedule,
    pick_device,
    precision_context,
    run_label,
    save_atomic,
    sgd_step,
    snapshot_schedule,
    tpt_start,
    train_epoch,
    train_one_lr,
)
