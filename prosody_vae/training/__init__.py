"""Training: TrainConfig, the trainer (torchrun + DDP), losses, atomic checkpoints and exact resume.

config.py (TrainConfig and the typed TOML loader), trainer.py, losses.py, checkpoint.py, state.py
(what a checkpoint holds for exact resume), data.py (the run's data), distributed.py, run_lock.py,
runlog.py and cpu_memory.py.
"""
