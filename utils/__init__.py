"""What every stage shares: dataset config, data, device/seed set-up, checkpoints, the train/evaluate loop."""
