"""dogbreeds: Kaggle Dog Breed Identification in two commands, `train` and `submit`."""

__version__ = "0.1.0"
