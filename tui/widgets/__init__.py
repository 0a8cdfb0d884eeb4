"""The dashboard's panes: operations table, detail, checkpoints, logs (and resources)."""
