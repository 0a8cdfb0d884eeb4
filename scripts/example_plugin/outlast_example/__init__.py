"""An example Outlast plugin (see operations.py and the README's "Writing an operation")."""
