"""Training: the learner and train() (learner.py), plans, losses, optimisers, precision, checkpoints and the run
folder's resume, experiment tracking, distributed launch, progress output, and their fastai callbacks."""
