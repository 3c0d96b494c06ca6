"""Data for the tasks: raw text (loading, synthetic), the tokenizer, and the LightningDataModules."""
