"""Self-supervised pretraining: differentiable sorting networks, losses, models, trainer."""
