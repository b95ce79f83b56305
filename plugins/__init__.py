"""First-party hookmix plugins, one sub-package per method; registered through entry points."""
