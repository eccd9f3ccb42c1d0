"""Configuration: the config schema (package data), one parameter dataclass per stage, the plumbing that builds
them from config mappings and CLI flags, the dry-run checks, and config/README.md's generator."""
