"""Plumbing every layer may use: safe atomic outputs (``io``), logging and progress (``logs``), background prefetch."""
