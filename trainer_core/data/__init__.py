"""Data for the tasks: raw text (loading, synthetic), the tokenizer, and the LightningDataModule base that every
task's data module builds on. What is task-specific (encoding, specials, synthetic rows) lives in the task's module
(trainer_core/tasks/)."""
