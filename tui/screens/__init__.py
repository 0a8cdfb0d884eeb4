"""Modal screens of the dashboard: confirmations, quit, launch form, help."""
