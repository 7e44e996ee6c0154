"""Weightless maths: each op beside its reference."""
