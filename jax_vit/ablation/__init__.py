"""The ablation study of the recipe: grids of settings (`grids`), the runner that trains them under one budget
(`runner`), one run's training and scoring (`train_run`) and the results files (`report`).
`scripts/ablate.py` is its command line; the trainer itself never imports this package."""
