"""Pure domain types and errors: no I/O, no frameworks."""
